"""PReLU with a faster backward pass on CPU.

``nn.PReLU``'s CPU backward computes the input gradient and the weight's reduction in one kernel
that is several times slower than the forward pass; on the FFN's (2B, L, 1024) activations it was
6 % of a training step. For the single-weight PReLU of the baseline, the input gradient is
``leaky_relu``'s backward with slope ``w`` (``g`` where ``x > 0``, ``w * g`` elsewhere, as torch's
prelu) and the weight gradient is ``dot(g, min(x, 0))``. Same parameter (``weight``), same values.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from amr.model.dropout import stacked


class _PReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        return torch.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, float(weight), False)
        grad_w = torch.dot(grad.reshape(-1), torch.clamp_max(x, 0.0).reshape(-1)).reshape(weight.shape)
        return grad_x, grad_w


class PReLU(nn.PReLU):
    """``nn.PReLU()`` (one learnable slope, init 0.25) with the fast CPU backward."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            not stacked()
            and not torch.compiler.is_compiling()
            and self.weight.numel() == 1
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and torch.is_grad_enabled()
        ):
            return _PReLUFn.apply(x, self.weight)
        return super().forward(x)
