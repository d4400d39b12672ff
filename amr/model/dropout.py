"""Dropout with the same law as ``nn.Dropout``, drawn faster on CPU.

A baseline training step drops ~35 M elements (more than 90 M for 300-frame batches), and on CPU
drawing them costs as much as a large share of the matrix products: ``nn.Dropout`` uses
``bernoulli_``, about twice the cost of ``torch.rand``, which itself runs one sequential Mersenne
Twister. Here each element gets one uniform 32-bit integer ``u`` from numpy's SFC64 (the cheapest
of numpy's generators; drawn lazily, see :func:`_fill`), and is kept when
``u >= round(p * 2**32)``: dropped with probability ``p`` to within 2**-33 (``torch.rand``
resolves only 2**-24). The compare writes the 0/1 float mask directly, and forward and backward
are one fused multiply each, scaled by 1 / (1 - p). One thread draws: a helper thread measured
slower inside a training step, where torch's OpenMP worker keeps spinning on the other core.

Each call draws its stream's seed from torch's global generator: ``torch.manual_seed`` makes the
masks reproducible, independent of the number of threads. On accelerators, for other dtypes and
while compiling, the framework's fused dropout is used. Stacked runs (:func:`member_streams`)
give each member its own generator instead of the global one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn


def _fill(seed: int, threshold: int, out: np.ndarray) -> None:
    """out[i] = 1.0 if the stream's i-th uniform 32-bit integer u_i >= threshold, else 0.0.

    u_i is drawn lazily: its top 8 bits first (eight per 64-bit output), which decide unless they
    equal the threshold's top 8 bits (1 in 256); only those ties draw their 24 low bits. The law
    is exactly that of a full 32-bit comparison, at about half the cost."""
    gen = np.random.SFC64(seed)
    high = gen.random_raw((out.size + 7) // 8).view(np.uint8)[: out.size]
    t_high, t_low = threshold >> 24, threshold & 0xFFFFFF
    np.greater(high, np.uint8(t_high), out=out, casting="unsafe")
    ties = np.flatnonzero(high == t_high)
    if ties.size:
        low = gen.random_raw((ties.size + 1) // 2).view(np.uint32)[: ties.size] >> 8
        out[ties] = low >= t_low


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, generator: torch.Generator | None = None) -> Tensor:
    """float32 0/1 mask, 1 with probability 1 - p (the 1 / (1 - p) scale is applied with it); its
    seed is drawn from ``generator`` (default: torch's global one)."""
    out = torch.empty(shape, dtype=torch.float32)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    _fill(seed, min(round(p * 2**32), 2**32 - 1), out.view(-1).numpy())
    return out


_ZERO = torch.zeros(())


def _fast(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32


class _DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        mask = keep_mask(x.shape, p)
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.addcmul(_ZERO, x, mask, value=ctx.scale)  # x * mask / (1 - p) in one pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.addcmul(_ZERO, grad, mask, value=ctx.scale), None


_member_streams: list[torch.Generator] | None = None  # set while stacked runs train (see below)


@contextmanager
def member_streams(generators: list[torch.Generator]) -> Iterator[None]:
    """Inside, dropout runs under ``torch.func.vmap`` over N stacked members, member m drawing its
    masks from ``generators[m]``. On the CPU in float32 a member's masks are those a run alone
    draws from the global generator in the same state: N stacked runs drop what N runs drop."""
    global _member_streams
    before, _member_streams = _member_streams, list(generators)
    try:
        yield
    finally:
        _member_streams = before


def _member_mask(shape: torch.Size, p: float, gen: torch.Generator, like: Tensor) -> Tensor:
    if _fast(like):
        return keep_mask(shape, p, gen)
    return (torch.rand(shape, generator=gen, device=like.device) >= p).to(like.dtype)


class _MemberMasks(torch.autograd.Function):
    """Keep masks of x's shape, one per vmapped member, each from that member's stream."""

    @staticmethod
    def forward(x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        return _member_mask(x.shape, p, cast(torch.Generator, None), x)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Tensor) -> None:
        ctx.mark_non_differentiable(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None]:  # type: ignore[override]
        return None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: Tensor, p: float) -> tuple[Tensor, int]:  # type: ignore[override]
        streams = _member_streams or []
        if info.batch_size != len(streams):
            raise RuntimeError(f"dropout under vmap over {info.batch_size} members with {len(streams)} streams")
        x = x.movedim(in_dims[0], 0)
        return torch.stack([_member_mask(x.shape[1:], p, g, x) for g in streams]), 0


def stacked() -> bool:
    """True inside :func:`member_streams` (the model runs under vmap: CPU-only shortcuts are off)."""
    return _member_streams is not None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Functional form of :class:`Dropout`."""
    if not training or p == 0.0:
        return x
    if _member_streams is not None:
        return torch.addcmul(_ZERO, x, _MemberMasks.apply(x, p), value=1.0 / (1.0 - p))
    if not _fast(x) or torch.compiler.is_compiling():  # a compiled graph: the framework's, traceable
        return nn.functional.dropout(x, p, True)
    return _DropoutFn.apply(x, p)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (no parameters, identity in eval mode)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
