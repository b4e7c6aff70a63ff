"""Pretrained models shipped with etp, loadable by name, and how one is built.

``etp.load("etp-ptbxl-mini")`` and ``etp zero-shot --model etp-ptbxl-mini`` find the model
directory inside the installed package (``etp/resources/models/<name>/``). A shipped directory is
an ordinary model directory (:mod:`etp.models.etp`) whose weights are stored in half precision
(the loader casts them to float32) plus its zero-shot defaults (:mod:`etp.zero_shot_defaults`).

Reproduction (docs/models.md)::

    python -m etp.pretrained build --ptbxl-root ../shared/data/ptb-xl --work runs/mini

prepares the cache, pretrains with ``configs/etp-ptbxl-mini.yaml``, exports the half-precision
directory with its zero-shot defaults to ``<work>/etp-ptbxl-mini`` and prints the SHA-256 of the
float32 weights the run saved and of every exported file; compare them with docs/models.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import shutil
import sys
from pathlib import Path
from typing import Any


from etp.errors import ConfigError, ModelError

#: shipped model name -> its directory under etp/resources/models
SHIPPED: dict[str, str] = {"etp-ptbxl-mini": "models/etp-ptbxl-mini"}
#: the prompt variant shipped as the zero-shot default (configs/benchmark-ptbxl.yaml)
DEFAULT_VARIANT = "en synonyms via reports"
#: PTB-XL records whose reports form the gallery of the shipped class embeddings (2,000 records,
#: 1,054 distinct reports after translation: about the size of the benchmark's galleries, and
#: embedded in minutes on a CPU); none of them has a signal in the partial download the model was
#: trained on (ecg_id 1-999)
GALLERY_ECG_IDS = (1000, 2999)


def shipped_models() -> list[str]:
    """Names of the models shipped with the package."""
    return sorted(SHIPPED)


def shipped_path(name: str) -> Path:
    """The directory of a shipped model (ModelError naming the shipped ones if unknown)."""
    if name not in SHIPPED:
        raise ModelError(f"no shipped model {name!r} (shipped: {', '.join(shipped_models())})")
    return Path(str(importlib.resources.files("etp").joinpath("resources", SHIPPED[name])))


def resolve_model(name_or_path: str | Path) -> Path:
    """A model directory from a path, or from the name of a shipped model when no such path
    exists."""
    p = Path(name_or_path)
    if not p.exists() and str(name_or_path) in SHIPPED:
        return shipped_path(str(name_or_path))
    return p


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ptbxl_gallery(
    root: str | Path, ecg_ids: tuple[int, int] = GALLERY_ECG_IDS
) -> tuple[list[str], dict]:
    """Reports (repeats kept) of the PTB-XL records with ``ecg_ids[0] <= ecg_id <= ecg_ids[1]``
    and a description of where they came from."""
    import pandas as pd

    from etp.data.readers import read_csv_checked

    csv = Path(root) / "ptbxl_database.csv"
    db = read_csv_checked(csv, ["ecg_id", "report"], "PTB-XL database")
    lo, hi = ecg_ids
    ids = pd.to_numeric(db["ecg_id"])
    rows = db[(ids >= lo) & (ids <= hi)]
    texts = [str(r).strip() for r in rows["report"].dropna() if str(r).strip()]
    if not texts:
        raise ConfigError(f"{csv}: no report of a record with ecg_id {lo}-{hi}")
    info = {
        "summary": f"{len(texts):,} PTB-XL reports (ecg_id {lo}-{hi})",
        "source": "PTB-XL ptbxl_database.csv, column 'report'",
        "file_sha256": sha256_file(csv),
        "records": f"ecg_id {lo}-{hi} ({len(rows)} rows, {len(texts)} non-empty reports, "
        f"{len(set(texts))} distinct)",
        "license": "PTB-XL (Wagner et al., Scientific Data 2020; PhysioNet), CC BY 4.0",
    }
    return texts, info


def export_model(
    run_model: str | Path,
    out: str | Path,
    ptbxl_root: str | Path,
    dtype: str = "float16",
    cache_dir: str | Path | None = None,
) -> Path:
    """Copy a trained model directory to ``out`` with half-precision weights, then add its
    zero-shot defaults (the shipped variant, class embeddings of ptbxl and cpsc2018 classes from
    the PTB-XL gallery :func:`ptbxl_gallery`)."""
    import torch
    from safetensors.torch import load_file, save_file

    from etp.eval.zero_shot import PromptOptions
    from etp.io import atomic_dir
    from etp.models.etp import CONFIG_FILE, WEIGHTS_FILE, load_model_dir
    from etp.zero_shot_defaults import write_defaults

    half = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if half is None:
        raise ConfigError(f"dtype: float16 or bfloat16, got {dtype!r}")
    src = Path(run_model)
    state = load_file(str(src / WEIGHTS_FILE))
    small = {k: (v.to(half) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    with atomic_dir(Path(out)) as tmp:
        shutil.copyfile(src / CONFIG_FILE, tmp / CONFIG_FILE)
        save_file(small, str(tmp / WEIGHTS_FILE), metadata={"format": "etp-model"})
    loaded = load_model_dir(out)
    texts, info = ptbxl_gallery(ptbxl_root)
    options = PromptOptions(languages=("en",), synonyms=True, via_reports=True)
    write_defaults(loaded, DEFAULT_VARIANT, options, ["ptbxl", "cpsc2018"], texts, info,
                   cache_dir=cache_dir)
    return Path(out)


def build(ptbxl_root: str, work: str, config: str = "configs/etp-ptbxl-mini.yaml") -> dict:
    """Prepare, pretrain and export the mini model under ``work``; returns the checksums."""
    from etp.cli import main

    cache = Path(work) / "cache-ptbxl-all"
    run = Path(work) / "run"
    rc = main([
        "prepare", "--dataset", "ptbxl", "--root", ptbxl_root, "--out", str(cache),
        "--only-present", "--train-folds", "1,2,3,4,5,6,7,8,9,10", "--val-folds", "11",
        "--test-folds", "12",
    ])
    if rc:
        raise SystemExit(rc)
    rc = main([
        "pretrain", "--config", config, f"data.cache={cache}", f"train.out_dir={run}",
        "train.progress=false",
    ])
    if rc:
        raise SystemExit(rc)
    out = export_model(run / "model", Path(work) / "etp-ptbxl-mini", ptbxl_root,
                       cache_dir=cache / "text_emb")
    return checksums(run / "model", out)


def checksums(run_model: str | Path, exported: str | Path) -> dict[str, Any]:
    """SHA-256 of the run's float32 weights and of every exported file."""
    sums = {"fp32 " + str(Path(run_model) / "model.safetensors"):
            sha256_file(Path(run_model) / "model.safetensors")}
    for f in sorted(Path(exported).iterdir()):
        sums[f.name] = sha256_file(f)
    return sums


def max_weight_difference(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between the (float32-cast) tensors of two model dirs."""
    from safetensors.torch import load_file

    sa, sb = load_file(str(Path(a) / "model.safetensors")), load_file(str(Path(b) / "model.safetensors"))
    if set(sa) != set(sb):
        return float("inf")
    return max(float((sa[k].float() - sb[k].float()).abs().max()) if sa[k].numel() else 0.0
               for k in sa)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etp.pretrained", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="prepare + pretrain + export etp-ptbxl-mini")
    b.add_argument("--ptbxl-root", required=True)
    b.add_argument("--work", required=True)
    b.add_argument("--config", default="configs/etp-ptbxl-mini.yaml")
    e = sub.add_parser("export", help="export a trained model directory (half precision + "
                       "zero-shot defaults)")
    e.add_argument("model")
    e.add_argument("--out", required=True)
    e.add_argument("--ptbxl-root", required=True)
    e.add_argument("--text-cache", help="text-embedding cache directory")
    args = p.parse_args(argv)
    if args.cmd == "build":
        sums = build(args.ptbxl_root, args.work, args.config)
    else:
        out = export_model(args.model, args.out, args.ptbxl_root, cache_dir=args.text_cache)
        sums = checksums(args.model, out)
    print(json.dumps(sums, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
