"""CPU fast path: the 1-D ResNet run as 2-D channels-last convolutions.

oneDNN's fastest bf16 CPU convolutions work on channels-last (NHWC) data; a 3-D (B, C, L) tensor
is always channels-first, so every Conv1d reorders its input and output. Running the same weights
as (1 x k) Conv2d on (B, C, 1, L) channels-last tensors avoids the reorders (figures:
docs/experiments.md, speed work). Parameters, buffers and the saved model are unchanged; only
one instance's forward computation differs, and it is checked against the module's own forward
before use (:func:`enable_channels_last`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["enable_channels_last", "resnet1d_forward_channels_last"]

log = logging.getLogger(__name__)


def _bn_2d(m: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """``nn.BatchNorm1d.forward`` semantics (running stats, momentum) on a 4-D tensor."""
    eaf = 0.0
    if m.training and m.track_running_stats and m.num_batches_tracked is not None:
        m.num_batches_tracked.add_(1)
        eaf = 1.0 / float(m.num_batches_tracked) if m.momentum is None else m.momentum
    use_batch = m.training or (m.running_mean is None and m.running_var is None)
    keep = not m.training or m.track_running_stats
    return F.batch_norm(
        x,
        m.running_mean if keep else None,
        m.running_var if keep else None,
        m.weight,
        m.bias,
        use_batch,
        eaf,
        m.eps,
    )


def _run_2d(m: nn.Module, x: Tensor) -> Tensor:
    """Apply a module of the ResNet1d18 tree to a (B, C, 1, L) channels-last tensor."""
    if isinstance(m, nn.Conv1d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise NotImplementedError("only zero padding given as numbers")
        return F.conv2d(
            x, m.weight.unsqueeze(2), m.bias, (1, m.stride[0]), (0, m.padding[0]),
            (1, m.dilation[0]), m.groups,
        )
    if isinstance(m, nn.BatchNorm1d):
        return _bn_2d(m, x)
    if isinstance(m, nn.ReLU):
        return F.relu(x, inplace=m.inplace)
    if isinstance(m, nn.MaxPool1d):
        k, st, pad = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
        if m.dilation not in (1, (1,)) or m.return_indices:
            raise NotImplementedError("dilated / index-returning max-pool")
        return F.max_pool2d(x, (1, k), (1, st), (0, pad), ceil_mode=m.ceil_mode)
    if isinstance(m, nn.Sequential):
        for sub in m:
            x = _run_2d(sub, x)
        return x
    if type(m).__name__ == "BasicBlock1d":
        identity = x if m.downsample is None else _run_2d(m.downsample, x)
        out = _run_2d(m.relu, _run_2d(m.bn1, _run_2d(m.conv1, x)))
        out = _run_2d(m.bn2, _run_2d(m.conv2, out))
        return _run_2d(m.relu, out + identity)
    raise NotImplementedError(f"no 2-D channels-last rule for {type(m).__name__}")


def resnet1d_forward_channels_last(encoder: nn.Module, x: Tensor, pooling: str = "avg") -> Tensor:
    """ResNet1d18's forward computed with 2-D channels-last convolutions: (B, C, L) -> (B, 512)
    (or the wider ``pooling`` readout, :func:`etp.models.resnet1d.global_pool`)."""
    from etp.models.resnet1d import global_pool

    if x.dim() != 3 or x.shape[1] != encoder.in_leads:
        return type(encoder).forward(encoder, x, pooling)  # the module's own checks and error
    h = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    h = _run_2d(encoder.maxpool, _run_2d(encoder.relu, _run_2d(encoder.bn1, _run_2d(encoder.conv1, h))))
    for layer in (encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4):
        h = _run_2d(layer, h)
    if not (isinstance(encoder.pool, nn.AdaptiveAvgPool1d) and encoder.pool.output_size in (1, (1,))):
        raise NotImplementedError("only global average pooling")
    return h.mean(dim=(2, 3)) if pooling == "avg" else global_pool(h, pooling)


def _close(a: Tensor, b: Tensor, tol: float = 1e-9) -> bool:
    """Equal up to float64 summation order: normwise relative difference below ``tol``."""
    a, b = a.detach().double(), b.detach().double()
    return a.shape == b.shape and float((a - b).norm()) <= tol * max(float(a.norm()), 1e-30)


def enable_channels_last(encoder: nn.Module) -> bool:
    """Make ``encoder`` (a ResNet1d18) compute with 2-D channels-last convolutions.

    The fast forward is first compared with the module's own forward (outputs, gradients and
    BatchNorm running statistics, on float64 copies: in fp32 the summation order alone can
    exceed a tight tolerance; see docs/experiments.md); on any difference or unsupported layer
    the encoder is left as it is and False is returned.
    """
    import copy
    from functools import partial

    if type(encoder).__name__ != "ResNet1d18":
        return False
    try:
        ref, fast = copy.deepcopy(encoder).double().train(), copy.deepcopy(encoder).double().train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(4, encoder.in_leads, 96, generator=gen, dtype=torch.float64)
        y_ref = ref(x)
        y_fast = resnet1d_forward_channels_last(fast, x)
        y_ref.square().sum().backward()
        y_fast.square().sum().backward()
        same = _close(y_ref, y_fast)
        for a, b in zip(ref.parameters(), fast.parameters()):
            same = same and a.grad is not None and b.grad is not None and _close(a.grad, b.grad)
        for a, b in zip(ref.buffers(), fast.buffers()):
            same = same and _close(a, b)
    except (NotImplementedError, AttributeError, RuntimeError) as exc:
        log.info("channels-last fast path not used (%s)", exc)
        return False
    if not same:
        log.warning("channels-last fast path differs from the encoder's forward; not used")
        return False
    encoder.forward = partial(resnet1d_forward_channels_last, encoder)  # this instance only
    return True
