"""ResNet18-1D: shapes for any length, size, cost, bad input, training behaviour."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from etp.errors import DataError
from etp.models.resnet1d import BasicBlock1d, ResNet1d18


@pytest.fixture(scope="module")
def net() -> ResNet1d18:
    torch.manual_seed(0)
    return ResNet1d18().eval()


@pytest.mark.parametrize("length", [1, 37, 250, 1000, 2500])
def test_any_length_gives_512(net: ResNet1d18, length: int) -> None:
    with torch.no_grad():
        out = net(torch.randn(2, 12, length))
    assert out.shape == (2, 512) and net.out_dim == 512
    assert torch.isfinite(out).all()


def test_parameter_count() -> None:
    n = sum(p.numel() for p in ResNet1d18().parameters())
    assert n == 3_848_832
    # only the stem depends on the number of leads (64 x leads x 7 weights)
    assert sum(p.numel() for p in ResNet1d18(in_leads=1).parameters()) == n - 11 * 64 * 7


def test_architecture() -> None:
    net = ResNet1d18()
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding) == ((7,), (2,), (3,))
    assert (net.maxpool.kernel_size, net.maxpool.stride) == (3, 2)
    for i, (layer, ch) in enumerate(zip([net.layer1, net.layer2, net.layer3, net.layer4],
                                        [64, 128, 256, 512])):
        assert len(layer) == 2 and all(isinstance(b, BasicBlock1d) for b in layer)
        assert layer[0].conv1.out_channels == ch and layer[0].conv1.kernel_size == (3,)
        assert layer[0].conv1.stride == ((1,) if i == 0 else (2,))
        assert (layer[0].downsample is None) == (i == 0)


def test_flops_per_record(net: ResNet1d18) -> None:
    """~175 M MACs forward for one 12 x 1000 record (0.35 GFLOP; ~1.05 with backward)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 12, 1000))
    assert counter.get_total_flops() == pytest.approx(0.350e9, rel=0.01)


@pytest.mark.parametrize("shape", [(12, 1000), (2, 11, 1000), (2, 12, 0)])
def test_bad_shape_is_a_clear_error(net: ResNet1d18, shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match=r"shape \(B, 12, L\)"):
        net(torch.randn(*shape))


def test_backward_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    net = ResNet1d18(in_leads=12).train()
    x = torch.randn(4, 12, 300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16
    y.float().pow(2).mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        ref = net.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    assert torch.allclose(low, ref, rtol=0.1, atol=0.1 * ref.abs().max().item())


def test_zero_init_residual() -> None:
    net = ResNet1d18(zero_init_residual=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in net.modules()
               if isinstance(b, BasicBlock1d))
    assert float(ResNet1d18().layer1[0].bn2.weight.detach().sum()) == 64.0


def test_avg_max_readout_concatenates_average_and_maximum(net: ResNet1d18) -> None:
    """'avg+max': the pretrained 512-d average followed by the maximum over time of layer 4."""
    from etp.errors import ConfigError

    x = torch.randn(3, 12, 1000)
    seen: dict[str, torch.Tensor] = {}
    hook = net.layer4.register_forward_hook(lambda m, i, o: seen.__setitem__("map", o))
    try:
        with torch.no_grad():
            both = net(x, "avg+max")
            avg = net(x)
    finally:
        hook.remove()
    assert both.shape == (3, 1024) and net.feature_dim("avg+max") == 1024
    assert torch.equal(both[:, :512], avg)
    assert torch.allclose(both[:, 512:], seen["map"].amax(-1))
    with pytest.raises(ConfigError, match="unknown feature pooling 'max'"):
        net(x, "max")
