"""Projection heads that map encoder features into the shared ECG-text space.

The paper uses one linear projection per modality (512-d output); a 2-layer MLP
(Linear-GELU-Linear, as in SimCLR-style projectors) is selectable. The heads return raw
vectors: L2 normalisation is done by the model, so the same head serves probing and training.
"""

from __future__ import annotations

from torch import Tensor, nn

from etp.errors import ConfigError

HEAD_KINDS = ("linear", "mlp")


class ProjectionHead(nn.Module):
    """Linear (paper) or Linear-GELU-Linear projection ``(B, in_dim) -> (B, out_dim)``."""

    def __init__(
        self, in_dim: int, out_dim: int, kind: str = "linear", hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ConfigError(
                f"model.head: unknown projection head {kind!r} (choose one of {HEAD_KINDS})"
            )
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(f"projection head dims must be >= 1, got {in_dim} -> {out_dim}")
        self.kind = kind
        self.in_dim = in_dim
        self.out_dim = out_dim
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            hidden = hidden_dim or max(in_dim, out_dim)
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
