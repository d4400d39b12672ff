"""The input projection of the DETR-style retrievers (the official ``LinearLayer`` stack)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from amr.model.dropout import Dropout


class InputProjection(nn.Module):
    """LayerNorm -> Dropout -> Linear -> optional ReLU (official ``LinearLayer``)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float, relu: bool) -> None:
        super().__init__()
        self.relu = relu
        self.LayerNorm = nn.LayerNorm(in_dim)
        self.net = nn.Sequential(Dropout(dropout), nn.Linear(in_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, in_dim) -> (B, L, out_dim)."""
        x = self.net(self.LayerNorm(x))
        return F.relu(x) if self.relu else x


def input_projection(in_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` projections ``in_dim -> hidden -> ... -> hidden``, ReLU after all but the last."""
    dims = [in_dim] + [hidden] * layers
    return nn.Sequential(*[InputProjection(dims[i], dims[i + 1], dropout, relu=i < layers - 1) for i in range(layers)])
