"""The CPU fast path (etp.models.channels_last): same results as the ResNet's own forward."""

from __future__ import annotations

import pytest
import torch

from etp.models.channels_last import enable_channels_last


def test_channels_last_fast_path_matches_the_encoder() -> None:
    import copy

    from etp.errors import DataError as _DataError
    from etp.models.resnet1d import ResNet1d18

    torch.manual_seed(0)
    enc = ResNet1d18()
    ref = copy.deepcopy(enc)
    assert enable_channels_last(enc)
    x = torch.randn(3, 12, 200)
    a, b = ref(x), enc(x)  # enc now runs the 2-D channels-last path
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    a.sum().backward()
    b.sum().backward()
    for p, q in zip(ref.parameters(), enc.parameters()):  # equal up to fp32 summation order
        assert (p.grad - q.grad).norm() <= 1e-4 * p.grad.norm()
    for p, q in zip(ref.buffers(), enc.buffers()):  # BatchNorm running statistics
        assert torch.allclose(p.float(), q.float(), rtol=1e-5, atol=1e-6)
    assert enc.state_dict().keys() == ref.state_dict().keys()
    with pytest.raises(_DataError, match=r"expects a batch of shape \(B, 12, L\)"):
        enc(torch.randn(2, 5, 100))
    assert not enable_channels_last(torch.nn.Linear(2, 2))


def test_channels_last_fast_path_reads_out_avg_max() -> None:
    import copy

    from etp.models.resnet1d import ResNet1d18

    torch.manual_seed(0)
    enc = ResNet1d18().eval()
    ref = copy.deepcopy(enc)
    assert enable_channels_last(enc)
    x = torch.randn(2, 12, 300)
    with torch.no_grad():
        a, b = ref(x, "avg+max"), enc(x, "avg+max")
    assert b.shape == (2, 1024) and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
