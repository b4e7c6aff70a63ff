"""Check: how far apart are the ResNet's own forward and the channels-last fast path, per precision?

:func:`etp.models.channels_last.enable_channels_last` compares the two paths (outputs, parameter
gradients, BatchNorm running statistics) on one small train-mode batch before it lets training
use the fast path. This script repeats that comparison for ``--inits`` seeded random
initialisations (``torch.manual_seed(seed)`` then ``ResNet1d18()``, seeds 0..N-1), in fp32 for
each ``--threads`` count (the summation order depends on it) and in float64, and reports the
largest normwise relative difference of each initialisation and how many exceed the fp32
tolerance the check used before (1e-4) and the float64 tolerance it uses now
(:func:`etp.models.channels_last._close`). It needs no data. Results go to
``benchmarks/results/channels_last_check.md``.

    python benchmarks/channels_last_check.py [--inits 40] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import inspect
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the tolerance of the earlier fp32 check
FP32_TOL = 1e-4


def worst_difference(seed: int, dtype: "torch.dtype") -> tuple[float, str]:  # noqa: F821
    """Largest normwise relative difference between the two paths for one initialisation, and
    the tensor it was found in."""
    import torch

    from etp.models.channels_last import resnet1d_forward_channels_last
    from etp.models.resnet1d import ResNet1d18

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).norm()) / max(float(a.norm()), 1e-30)

    torch.manual_seed(seed)
    enc = ResNet1d18()
    ref, fast = copy.deepcopy(enc).to(dtype).train(), copy.deepcopy(enc).to(dtype).train()
    x = torch.randn(4, enc.in_leads, 96, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y_ref, y_fast = ref(x), resnet1d_forward_channels_last(fast, x)
    y_ref.square().sum().backward()
    y_fast.square().sum().backward()
    found = [(rel(y_ref, y_fast), "output")]
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        found.append((rel(a.grad, b.grad), f"grad {name}"))
    for (name, a), b in zip(ref.named_buffers(), fast.buffers()):
        found.append((rel(a, b), f"buffer {name}"))
    return max(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inits", type=int, default=40, help="random initialisations (seeds 0..N-1)")
    ap.add_argument(
        "--threads", default="1,2", help="CPU thread counts to run fp32 with (comma-separated)"
    )
    out = REPO / "benchmarks" / "results" / "channels_last_check.md"
    ap.add_argument("--out", default=str(out))
    args = ap.parse_args(argv)
    if args.inits < 1:
        ap.error(f"--inits must be >= 1, got {args.inits}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads: comma-separated integers, got {args.threads!r}")
    if not threads or min(threads) < 1:
        ap.error(f"--threads: each count must be >= 1, got {args.threads!r}")

    import torch

    from etp.eval.report import machine_info
    from etp.io import atomic_write_text
    from etp.models.channels_last import _close

    float64_tol = inspect.signature(_close).parameters["tol"].default
    fp32: dict[int, list[tuple[float, str]]] = {}
    for n in threads:  # fp32 summation order (and so the difference) depends on the threads
        torch.set_num_threads(n)
        fp32[n] = [worst_difference(seed, torch.float32) for seed in range(args.inits)]
    f64 = [worst_difference(seed, torch.float64) for seed in range(args.inits)]
    m = machine_info()
    lines = [
        "# Channels-last fast path against the ResNet's own forward: fp32 and float64",
        "",
        f"- command: `{shlex.join(['python', *sys.argv])}`",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- machine: {m.get('cpu_model')}, {m.get('cpu_count')} cores; torch {m.get('torch')}",
        "",
        "One train-mode batch of 4 x 12 x 96 (the self-check's), loss = sum of squared outputs; "
        "per initialisation the largest normwise relative difference over the output, every "
        "parameter gradient and every BatchNorm buffer (and where it was largest).",
        "",
    ]
    for n, worst in fp32.items():
        over = [seed for seed, (d, _) in enumerate(worst) if d > FP32_TOL]
        lines.append(
            f"- fp32, {n} thread(s): above the earlier check's tolerance {FP32_TOL:g} for "
            f"{len(over)} of {args.inits} initialisations (seeds {over}); largest "
            f"{max(d for d, _ in worst):.1e}"
        )
    over = [seed for seed, (d, _) in enumerate(f64) if d > float64_tol]
    lines += [
        f"- float64 (last thread count): above the current tolerance {float64_tol:g} for "
        f"{len(over)} of {args.inits} (seeds {over}); largest {max(d for d, _ in f64):.1e}",
        "",
        "| seed | " + " | ".join(f"fp32, {n} thread(s)" for n in fp32) + " | float64 |",
        "|---|" + "---|" * (len(fp32) + 1),
    ]
    for seed in range(args.inits):
        cells = [f"{fp32[n][seed][0]:.1e} ({fp32[n][seed][1]})" for n in fp32]
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {f64[seed][0]:.1e} |")
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines[: 11 + len(fp32)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
