"""Helpers of the hardening tests: small manifests of real sample records, altered on purpose,
and a snapshot of a directory's bytes (to show that earlier results are untouched)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd

from etp.cli import main

PTBXL = Path(__file__).resolve().parents[1] / "data" / "sample" / "ptb-xl"


def sample_rows(n: int) -> list[dict[str, str]]:
    """The first ``n`` bundled PTB-XL records: stem, report, patient, a coarse label."""
    db = pd.read_csv(PTBXL / "ptbxl_database.csv", dtype=str, keep_default_na=False)
    rows = []
    for r in db.to_dict("records"):
        if not (PTBXL / (r["filename_lr"] + ".hea")).is_file():
            continue
        label = "NORM" if "'NORM'" in r["scp_codes"] else "ABN"
        rows.append({"stem": r["filename_lr"], "report": r["report"],
                     "patient_id": r["patient_id"], "labels": label})  # fmt: skip
        if len(rows) == n:
            break
    return rows


def make_manifest(
    folder: Path, n: int = 12, columns: tuple[str, ...] = ("labels", "split"),
    rename: dict[str, str] | None = None, labels: list[str] | None = None,
) -> Path:  # fmt: skip
    """A manifest CSV over copies of ``n`` real records in ``folder/ecgs`` (splits cycle
    train, train, val, test when ``split`` is among ``columns``)."""
    ecgs = folder / "ecgs"
    ecgs.mkdir(parents=True, exist_ok=True)
    out = []
    for i, r in enumerate(sample_rows(n)):
        name = Path(r["stem"]).name
        for ext in (".hea", ".dat"):
            shutil.copy(PTBXL / (r["stem"] + ext), ecgs / (name + ext))
        row = {"path": f"ecgs/{name}", "report": r["report"]}
        if "labels" in columns:
            row["labels"] = labels[i % len(labels)] if labels else r["labels"]
        if "split" in columns:
            row["split"] = ("train", "train", "val", "test")[i % 4]
        if "patient_id" in columns:
            row["patient_id"] = r["patient_id"]
        out.append(row)
    df = pd.DataFrame(out).rename(columns=rename or {})
    path = folder / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def edit_header(stem: Path, edit) -> None:  # type: ignore[no-untyped-def]
    hea = stem.with_name(stem.name + ".hea")
    hea.write_text(edit(hea.read_text()))


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def prepare(manifest: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "--dataset", "manifest", "--root", str(manifest), "--out", str(out),
                 "--no-progress", *extra])  # fmt: skip


TINY_RUN = ("train.method=simclr", "train.epochs=1", "train.batch_size=4", "train.progress=false",
            "train.num_workers=0", "train.precision=fp32")  # fmt: skip


def pretrain(cache: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", f"data.cache={cache}", f"train.out_dir={out}", *TINY_RUN, *extra])
