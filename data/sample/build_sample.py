"""How data/sample was cut from the real data (kept for provenance; run from the repo root).

    python data/sample/build_sample.py --shared ../shared/data --out data/sample

Files are copied byte for byte; only the label/metadata tables are reduced to the rows of the
copied records (same columns, same order, same formatting as the originals).
"""

from __future__ import annotations

import argparse
import ast
import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

# PTB-XL: single-label records per superclass to take (all HYP there are), plus multi-label
# and no-superclass records, spread round-robin over the ten strat_folds
PTBXL_QUOTA = {"HYP": 100, "MI": 30, "CD": 30, "STTC": 30, "NORM": 50, "multi": 20, "none": 4}
PTBXL_MAX_ID = 999
# two of the chosen records also at 500 Hz (records500/), so the 500 -> 100 Hz path is tested
# on real files: a NORM record (fold 6) and an LVH (HYP) record (fold 9)
PTBXL_500HZ = [16, 30]
SEED = 0
# CPSC2018: two short single-label WFDB records per class, the SNOMED-coded A5432, the
# multi-label A0043 (#Dx: AF,RBBB), and the two smallest original-form .mat files
CPSC_WFDB = [
    "A0002", "A0029",  # Normal
    "A0003", "A0007",  # AF
    "A0039", "A0042",  # I-AVB
    "A0044", "A0057",  # LBBB
    "A0010", "A0027",  # RBBB
    "A0047", "A0049",  # PAC
    "A0025", "A0045",  # PVC
    "A0033", "A0056",  # STD
    "A0021", "A0034",  # STE
    "A0043",  # AF + RBBB
    "A5432",  # PAC, #Dx as SNOMED-CT code 284470004
]  # fmt: skip
CPSC_MAT = ["A1980", "A1982"]


def _superclasses(scp_codes: str, diag: pd.Series) -> list[str]:
    return sorted({diag[c] for c in ast.literal_eval(scp_codes) if c in diag.index})


def _round_robin(df: pd.DataFrame, n: int, rng: np.random.Generator) -> list[int]:
    """Up to n ecg_ids, taken in turn from each strat_fold (random order within a fold)."""
    per_fold = {
        f: list(rng.permutation(g.index.to_numpy())) for f, g in df.groupby("strat_fold")
    }
    out: list[int] = []
    while len(out) < n and any(per_fold.values()):
        for f in sorted(per_fold):
            if per_fold[f] and len(out) < n:
                out.append(int(per_fold[f].pop()))
    return out


def build_ptbxl(src: Path, dst: Path) -> None:
    db = pd.read_csv(src / "ptbxl_database.csv", index_col="ecg_id")
    scp = pd.read_csv(src / "scp_statements.csv", index_col=0)
    diag = scp.loc[scp.diagnostic == 1, "diagnostic_class"]
    db = db.loc[db.index <= PTBXL_MAX_ID]
    db = db[[(src / f"{p}.hea").is_file() for p in db.filename_lr]]
    sup = db.scp_codes.map(lambda s: _superclasses(s, diag))
    group = sup.map(lambda s: s[0] if len(s) == 1 else ("none" if not s else "multi"))
    rng = np.random.default_rng(SEED)
    ids: list[int] = []
    for name, n in PTBXL_QUOTA.items():
        ids += _round_robin(db[group == name], n, rng)
    ids = sorted(ids)
    (dst / "records100" / "00000").mkdir(parents=True, exist_ok=True)
    for i in ids:
        for ext in (".hea", ".dat"):
            rel = db.loc[i, "filename_lr"] + ext
            shutil.copyfile(src / rel, dst / rel)
    assert set(PTBXL_500HZ) <= set(ids), "the 500 Hz records must be among the chosen ones"
    for i in PTBXL_500HZ:
        rel_hr = db.loc[i, "filename_hr"]
        (dst / rel_hr).parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copyfile(src / (rel_hr + ext), dst / (rel_hr + ext))
    # the same rows of the original CSV, byte for byte
    lines = (src / "ptbxl_database.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    reader = csv.reader(lines)
    header = next(reader)
    keep = [lines[0]]
    # rows may not span lines in this file; check that and select by ecg_id
    assert len(lines) == 21837 + 1, "unexpected multi-line rows"
    wanted = {str(i) for i in ids}
    keep += [line for line in lines[1:] if line.split(",", 1)[0] in wanted]
    assert len(keep) == len(ids) + 1 and header[0] == "ecg_id"
    (dst / "ptbxl_database.csv").write_text("".join(keep), encoding="utf-8")
    shutil.copyfile(src / "scp_statements.csv", dst / "scp_statements.csv")
    sums = (src / "SHA256SUMS.local.txt").read_text().splitlines()
    files = {"ptbxl_database.csv", "scp_statements.csv"}
    files |= {db.loc[i, "filename_lr"] + ext for i in ids for ext in (".hea", ".dat")}
    files |= {db.loc[i, "filename_hr"] + ext for i in PTBXL_500HZ for ext in (".hea", ".dat")}
    (dst / "SHA256SUMS.original.txt").write_text(
        "\n".join(s for s in sums if s.split(" ", 1)[1] in files - {"ptbxl_database.csv"}) + "\n"
    )
    print("ptb-xl:", len(ids), "records;", group.loc[ids].value_counts().to_dict())


def build_cpsc(src: Path, dst: Path) -> None:
    (dst / "wfdb").mkdir(parents=True, exist_ok=True)
    (dst / "original-mat").mkdir(parents=True, exist_ok=True)
    (dst / "labels" / "merl-split").mkdir(parents=True, exist_ok=True)
    for rid in CPSC_WFDB:
        for ext in (".hea", ".mat"):
            shutil.copyfile(src / "wfdb" / (rid + ext), dst / "wfdb" / (rid + ext))
    for rid in CPSC_MAT:
        shutil.copyfile(src / "original-mat" / f"{rid}.mat", dst / "original-mat" / f"{rid}.mat")
    wanted = set(CPSC_WFDB) | set(CPSC_MAT)
    ref = (src / "labels" / "REFERENCE.csv").read_text().splitlines(keepends=True)
    keep = [ref[0]] + [r for r in ref[1:] if r.split(",", 1)[0] in wanted]
    (dst / "labels" / "REFERENCE.csv").write_text("".join(keep))
    for f in sorted((src / "labels" / "merl-split").glob("*.csv")):
        lines = f.read_text().splitlines(keepends=True)
        col = next(csv.reader(lines[:1])).index("filename")
        rows = [line for line in lines[1:] if next(csv.reader([line]))[col] in wanted]
        (dst / "labels" / "merl-split" / f.name).write_text("".join([lines[0], *rows]))
    print("cpsc2018:", len(CPSC_WFDB), "wfdb +", len(CPSC_MAT), "original .mat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("data/sample"))
    args = ap.parse_args()
    build_ptbxl(args.shared / "ptb-xl", args.out / "ptb-xl")
    build_cpsc(args.shared / "cpsc2018", args.out / "cpsc2018")


if __name__ == "__main__":
    main()
