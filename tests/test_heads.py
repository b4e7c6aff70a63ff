"""Projection heads: linear (paper) and 2-layer MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from etp.errors import ConfigError
from etp.models.heads import ProjectionHead


def test_linear_head() -> None:
    head = ProjectionHead(384, 512)
    assert isinstance(head.net, nn.Linear)
    assert sum(p.numel() for p in head.parameters()) == 384 * 512 + 512
    assert head(torch.randn(5, 384)).shape == (5, 512)


def test_mlp_head() -> None:
    head = ProjectionHead(512, 128, kind="mlp")
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Linear]
    assert layers[0].out_features == 512
    assert head(torch.randn(3, 512)).shape == (3, 128)
    assert ProjectionHead(8, 4, kind="mlp", hidden_dim=16).net[0].out_features == 16


def test_output_is_not_normalised_by_the_head() -> None:
    torch.manual_seed(0)
    out = ProjectionHead(16, 8)(torch.randn(4, 16) * 10)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(4))


def test_bad_kind_and_dims() -> None:
    with pytest.raises(ConfigError, match="unknown projection head 'conv'"):
        ProjectionHead(8, 8, kind="conv")
    with pytest.raises(ConfigError, match="dims must be >= 1"):
        ProjectionHead(0, 8)
