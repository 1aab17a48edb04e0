"""Torch modules for tabular data."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import nn


class MLPSpec(BaseModel):
    """Everything needed to rebuild the network around saved weights."""

    model_config = ConfigDict(frozen=True)

    in_features: int
    out_features: int
    width: int
    depth: int
    dropout: float


class TabularMLP(nn.Module):
    """A plain MLP: `depth` blocks of Linear, ReLU, Dropout, then a linear head."""

    def __init__(self, spec: MLPSpec):
        super().__init__()
        layers: list[nn.Module] = []
        width_in = spec.in_features
        for _ in range(spec.depth):
            layers += [nn.Linear(width_in, spec.width), nn.ReLU(), nn.Dropout(spec.dropout)]
            width_in = spec.width
        layers.append(nn.Linear(width_in, spec.out_features))
        self.net = nn.Sequential(*layers)
        self.spec = spec

    def forward(self, x):
        out = self.net(x)
        return out.squeeze(-1) if self.spec.out_features == 1 else out
