"""ECG<->report retrieval (etp.eval.retrieval): distinct reports as the gallery."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from etp.eval.retrieval import evaluate_retrieval, retrieval_metrics

REPORTS = [
    "sinus rhythm. normal ecg.",
    "sinusrhythmus lagetyp normal normales ekg",
    "sinusrhythmus linkstyp qrs(t) abnorm    inferiorer infarkt     alter unbest.",
    "sinus rhythm. right bundle branch block.",
    "sinusrhythmus lagetyp normal mässige amplitudenkriterien für linkshypertrophie",
    "atrial fibrillation with rapid ventricular response.",
    "sinusrytm normalt ekg",
    "trace only requested.",
    "sinus rhythm. left axis deviation. left anterior fascicular block.",
    "sinusrhythmus lagetyp normal unspezifisches abnormes t",
    "sinusrhythmus a-v block i lagetyp normal",
    "sinus rhythm. prolonged pr interval. otherwise normal ecg.",
]


def embed_by_text(dim: int = 64):
    def fn(texts: list[str]) -> np.ndarray:
        return np.stack(
            [np.random.default_rng(zlib.crc32(t.encode())).normal(size=dim) for t in texts]
        )

    return fn


def test_perfect_alignment_with_shared_reports() -> None:
    rng = np.random.default_rng(0)
    owner = rng.integers(0, len(REPORTS), size=60)  # several ECGs share one report
    reports = [REPORTS[i] for i in owner]
    fn = embed_by_text()
    ecg = fn(reports) + rng.normal(scale=0.01, size=(60, 64))
    r = evaluate_retrieval(ecg, reports, fn)
    assert r["n_reports"] == len(set(reports)) and r["n_ecgs"] == 60
    assert r["ecg_to_report"] == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0}
    assert r["report_to_ecg"]["R@1"] == 1.0
    assert r["median_rank_ecg_to_report"] == 1.0


def test_random_embeddings_near_chance_and_monotone() -> None:
    rng = np.random.default_rng(1)
    n, u = 400, 100
    idx = np.arange(n) % u
    r = retrieval_metrics(
        rng.normal(size=(n, 16)), rng.normal(size=(u, 16)), idx, ks=(1, 5, 10, 50)
    )
    e2t = r["ecg_to_report"]
    assert e2t["R@1"] <= e2t["R@5"] <= e2t["R@10"] <= e2t["R@50"]
    assert abs(e2t["R@10"] - 0.10) < 0.06 and abs(e2t["R@50"] - 0.5) < 0.1
    # report->ECG: each report has 4 ECGs among 400, R@10 ~ 1-(1-4/400)^10 ~ 0.096
    assert r["report_to_ecg"]["R@10"] < 0.3


def test_ties_give_no_credit() -> None:
    r = retrieval_metrics(np.zeros((5, 4)), np.ones((5, 4)), np.arange(5), ks=(1, 5))
    assert r["ecg_to_report"]["R@1"] == 0.0 and r["report_to_ecg"]["R@1"] == 0.0
    assert r["ecg_to_report"]["R@5"] == 1.0  # every item fits in the top 5


def test_hand_ranked_example() -> None:
    ecg = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    rep = np.array([[1.0, 0.0], [0.0, 1.0]])
    # ECG 2 belongs to report 1 but is closer to report 0
    r = retrieval_metrics(ecg, rep, np.array([0, 1, 1]), ks=(1, 2))
    assert r["ecg_to_report"]["R@1"] == pytest.approx(2 / 3)
    assert r["ecg_to_report"]["R@2"] == 1.0
    # report 0's best ECG is ECG 0 (hit); report 1's best is ECG 1 (hit)
    assert r["report_to_ecg"]["R@1"] == 1.0


def test_records_without_report_are_skipped_and_bad_input() -> None:
    fn = embed_by_text()
    reports = ["a", "", "b", "  "]
    r = evaluate_retrieval(fn(["a", "x", "b", "y"]), reports, fn)
    assert r["n_ecgs"] == 2 and r["n_without_report"] == 2
    with pytest.raises(ValueError, match="no ECG"):
        evaluate_retrieval(np.zeros((2, 4)), ["", ""], fn)
    with pytest.raises(ValueError, match="reports for"):
        evaluate_retrieval(np.zeros((3, 4)), ["a"], fn)
    with pytest.raises(ValueError, match="gallery"):
        retrieval_metrics(np.zeros((2, 4)), np.zeros((1, 4)), np.array([0, 3]))


def test_reports_with_the_same_canonical_text_are_one_gallery_item() -> None:
    """Two spellings of one report, embedded identically, must not cost each other the hit."""
    from etp.data.text import ReportTranslator, load_glossary

    translate = ReportTranslator(load_glossary()).translate
    reports = ["sinusrhythmus normales ekg", "sinus rhythm normal ecg", "sinus rhythm. right bundle branch block."]
    base = embed_by_text()

    def embed(texts: list[str]) -> np.ndarray:  # what a translating model does: embed the translation
        return base(translate(texts))

    ecg = embed(reports)  # every ECG sits exactly on its report
    plain = evaluate_retrieval(ecg, reports, embed, ks=(1,))
    merged = evaluate_retrieval(ecg, reports, embed, ks=(1,), canonical=translate)
    assert plain["ecg_to_report"]["R@1"] == pytest.approx(1 / 3)  # the twins tie: no credit
    assert merged["ecg_to_report"]["R@1"] == 1.0
    assert merged["report_to_ecg"]["R@1"] == 1.0
    with pytest.raises(ValueError, match="canonical"):
        evaluate_retrieval(ecg, reports, embed, canonical=lambda ts: ts[:1])
