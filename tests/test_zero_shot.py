"""Zero-shot classification (etp.eval.zero_shot) with a stub text encoder, and the prompt table."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from etp.errors import ConfigError
from etp.eval.zero_shot import (
    DEFAULT_TEMPLATE,
    PromptOptions,
    ReportGallery,
    build_prompts,
    class_text_embeddings,
    default_prompt_table_path,
    evaluate_zero_shot,
    load_prompt_table,
    report_prototypes,
    zero_shot_classify,
    zero_shot_scores,
)

PTBXL = ("NORM", "MI", "STTC", "CD", "HYP")
CPSC = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
DIM = 32
KEYWORDS = ["normal", "infarkt", "infarction", "st/t", "abnormes t", "block", "hypertroph"]
KEY_CLASS = [0, 1, 1, 2, 2, 3, 4]


def stub_embed(texts: list[str]) -> np.ndarray:
    """A fake text encoder: a class direction for each keyword found, plus per-text noise."""
    basis = np.eye(DIM)[: len(PTBXL)]
    out = []
    for t in texts:
        v = np.random.default_rng(zlib.crc32(t.encode())).normal(scale=0.05, size=DIM)
        for kw, c in zip(KEYWORDS, KEY_CLASS):
            if kw in t.lower():
                v += basis[c]
        out.append(v)
    return np.asarray(out, dtype=np.float32)


def test_shipped_table_covers_both_datasets() -> None:
    table = load_prompt_table()
    assert default_prompt_table_path().is_file()
    assert tuple(table.classes("ptbxl")) == PTBXL
    assert tuple(table.classes("cpsc2018")) == CPSC
    assert table.templates["en"][0] == DEFAULT_TEMPLATE
    for ds in ("ptbxl", "cpsc2018"):
        for cls in table.classes(ds):
            for lang in ("en", "de"):
                assert table.names(ds, cls, lang), (ds, cls, lang)
    assert {"en", "de", "sv"} <= set(table.languages())
    assert "linksschenkelblock" in table.names("cpsc2018", "LBBB", "de")
    assert table.names("ptbxl", "MI", "de")[0] == "inferiorer infarkt"
    with pytest.raises(ConfigError, match="no classes for dataset 'mitbih'"):
        table.classes("mitbih")


def test_build_prompts_paper_default_and_options() -> None:
    table = load_prompt_table()
    paper = build_prompts(PTBXL, "ptbxl", table)
    assert paper["NORM"] == ["this ECG indicates normal ECG"]
    assert paper["MI"] == ["this ECG indicates myocardial infarction"]
    de = build_prompts(PTBXL, "ptbxl", table, PromptOptions(languages=("de",)))
    assert de["MI"] == ["inferiorer infarkt"]
    both = build_prompts(
        PTBXL, "ptbxl", table, PromptOptions(languages=("en", "de"), synonyms=True)
    )
    assert "mässige amplitudenkriterien für linkshypertrophie" in both["HYP"]
    assert "this ECG indicates hypertrophy" in both["HYP"]
    assert len(both["CD"]) == len(set(both["CD"])) > 6
    ens = build_prompts(PTBXL, "ptbxl", table, PromptOptions(ensemble=True))
    assert len(ens["NORM"]) == len(table.ensemble_templates["en"])
    custom = build_prompts(
        PTBXL, "ptbxl", table, PromptOptions(templates=("ECG: {name}", "{name}"))
    )
    assert custom["STTC"] == ["ECG: ST/T change", "ST/T change"]
    # a language the table lacks for a class falls back to its English name
    fr = build_prompts(PTBXL, "ptbxl", table, PromptOptions(languages=("fr",)))
    assert fr["NORM"] == ["this ECG indicates normal ECG"]


def test_free_text_labels_are_used_verbatim() -> None:
    prompts = build_prompts(["atrial fibrillation", "normal ECG"])
    assert prompts == {
        "atrial fibrillation": ["this ECG indicates atrial fibrillation"],
        "normal ECG": ["this ECG indicates normal ECG"],
    }
    with pytest.raises(ConfigError, match="empty"):
        build_prompts([])
    with pytest.raises(ConfigError, match="empty class name"):
        build_prompts(["AF", " "])
    with pytest.raises(ConfigError, match=r"must contain \{name\}"):
        build_prompts(["AF"], options=PromptOptions(templates=("no placeholder",)))
    with pytest.raises(ConfigError, match="only contain"):
        build_prompts(["AF"], options=PromptOptions(templates=("{name} {other}",)))


def test_user_table_from_path(tmp_path) -> None:
    path = tmp_path / "my_prompts.yaml"
    path.write_text(
        "templates:\n  en: ['an ecg with {name}']\n"
        "datasets:\n  mine:\n    AF:\n      en: [atrial fibrillation, afib]\n"
        "      de: [vorhofflimmern]\n",
        encoding="utf-8",
    )
    table = load_prompt_table(path)
    assert table.classes("mine") == ["AF"]
    p = build_prompts(["AF"], "mine", table, PromptOptions(languages=("en", "de"), synonyms=True))
    assert p["AF"] == ["an ecg with atrial fibrillation", "an ecg with afib", "vorhofflimmern"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates:\n  en: ['no placeholder']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_prompt_table(bad)
    bad.write_text("datasets:\n  x:\n    AF:\n      en: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml.*datasets.x.AF.en"):
        load_prompt_table(bad)
    bad.write_text("tempaltes: {}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key"):
        load_prompt_table(bad)
    bad.write_text("a: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid YAML"):
        load_prompt_table(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_prompt_table(tmp_path / "missing.yaml")


def test_prompt_ensemble_is_mean_of_normalised_embeddings() -> None:
    def embed(texts: list[str]) -> np.ndarray:
        table = {"a": [3.0, 0.0], "b": [0.0, 0.5], "c": [1.0, 1.0]}
        return np.array([table[t] for t in texts])

    emb = class_text_embeddings({"X": ["a", "b"], "Y": ["c"]}, embed)
    assert np.allclose(emb[0], [np.sqrt(0.5), np.sqrt(0.5)])  # mean of (1,0),(0,1), renormalised
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0)


def test_scores_softmax_with_logit_scale() -> None:
    ecg = np.array([[1.0, 0.0], [0.6, 0.8]])
    cls = np.array([[1.0, 0.0], [0.0, 2.0]])
    sims, probs = zero_shot_scores(ecg, cls, logit_scale=10.0)
    assert np.allclose(sims, [[1.0, 0.0], [0.6, 0.8]])
    assert np.allclose(probs.sum(1), 1.0)
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-10.0)))
    _, flat = zero_shot_scores(ecg, cls, logit_scale=1.0)
    assert flat[0, 0] < probs[0, 0]


def test_zero_shot_with_stub_encoder_recovers_classes() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(5, size=300, p=[0.5, 0.15, 0.15, 0.12, 0.08])
    ecg = np.eye(DIM)[y] + rng.normal(scale=0.3, size=(300, DIM))
    res = evaluate_zero_shot(ecg, y, PTBXL, stub_embed, logit_scale=1 / 0.07, dataset="ptbxl")
    pred = res.prediction
    assert pred.probabilities.shape == (300, 5) and pred.similarities.shape == (300, 5)
    assert np.array_equal(pred.predictions, pred.similarities.argmax(1))
    assert np.array_equal(pred.predictions, pred.probabilities.argmax(1))
    assert res.metrics["average"]["auc"] > 0.95
    assert res.metrics["per_class"]["MI"]["auc"] == pytest.approx(
        roc_auc_score(y == 1, pred.probabilities[:, 1])
    )
    summary = res.to_dict()
    assert summary["prompts"]["NORM"] == ["this ECG indicates normal ECG"]
    assert summary["options"]["languages"] == ["en"]
    # German report phrasings reach the same classes through the stub's keywords
    de = zero_shot_classify(
        ecg, PTBXL, stub_embed, 14.0, "ptbxl", options=PromptOptions(languages=("de",))
    )
    assert np.mean(de.predictions == y) > 0.6
    with pytest.raises(ValueError, match="labels"):
        evaluate_zero_shot(ecg, y[:10], PTBXL, stub_embed, 14.0)


def _table_embed(table: dict[str, list[float]]):
    def embed(texts: list[str]) -> np.ndarray:
        return np.array([table[t] for t in texts], dtype=np.float64)

    return embed


def test_report_prototypes_average_the_reports_nearest_each_class() -> None:
    prompts = {"X": ["px"], "Y": ["py"], "Z": ["pz"]}
    frozen = _table_embed(
        {"px": [1, 0, 0], "py": [0, 1, 0], "pz": [0, 0, 1],
         "r1": [0.9, 0.1, 0], "r2": [0.8, 0, 0.3], "r3": [0.1, 1, 0]}
    )
    # the shared space differs from the frozen one: prototypes must come from it
    joint = _table_embed(
        {"px": [0, 0, 0, 1], "py": [0, 0, 1, 1], "pz": [1, 1, 1, 1],
         "r1": [2, 0, 0, 0], "r2": [0, 1, 0, 0], "r3": [0, 0, 3, 0]}
    )
    emb, counts = report_prototypes(prompts, ReportGallery(["r1", "r1", "r2", "r3", " "], frozen), joint)
    assert counts == {"X": 3, "Y": 1, "Z": 0}  # repeats count, blank reports are dropped
    assert np.allclose(emb[0], np.array([2, 1, 0, 0]) / np.sqrt(5))  # mean of e0, e0, e1
    assert np.allclose(emb[1], [0, 0, 1, 0])
    assert np.allclose(emb[2], [0.5, 0.5, 0.5, 0.5])  # no report: the prompt's own embedding
    with pytest.raises(ConfigError, match="no non-empty report"):
        report_prototypes(prompts, ReportGallery(["", "  "], frozen), joint)


def test_zero_shot_via_reports_uses_the_gallery() -> None:
    """Prompts that sit apart from the reports (as short prompts do) mislead plain zero-shot;
    report prototypes find the classes where the ECGs were trained to be."""
    rng = np.random.default_rng(1)
    y = rng.choice(5, size=200)
    ecg = np.eye(DIM)[y] + rng.normal(scale=0.2, size=(200, DIM))
    reports = ["normal", "infarction", "st/t", "block", "hypertroph"] * 4

    def joint(texts: list[str]) -> np.ndarray:  # prompts land in the wrong (shifted) directions
        shift = np.roll(np.eye(DIM), 1, axis=1)
        return np.array(
            [stub_embed([t])[0] @ (np.eye(DIM) if t in reports else shift) for t in texts]
        )

    plain = evaluate_zero_shot(ecg, y, PTBXL, joint, 14.0, "ptbxl")
    opts = PromptOptions(via_reports=True)
    gallery = ReportGallery(reports, stub_embed)
    via = evaluate_zero_shot(ecg, y, PTBXL, joint, 14.0, "ptbxl", options=opts, gallery=gallery)
    assert plain.metrics["average"]["auc"] < 0.7 < 0.9 < via.metrics["average"]["auc"]
    # the stub's English CD prompt ("conduction disturbance") has no keyword: its reports ("block")
    # go to NORM, and CD keeps its prompt embedding
    assert via.prediction.report_counts == {"NORM": 8, "MI": 4, "STTC": 4, "CD": 0, "HYP": 4}
    summary = via.to_dict()
    assert summary["options"]["via_reports"] is True and summary["report_counts"]["MI"] == 4
    assert opts.describe() == "en, via reports"
    with pytest.raises(ConfigError, match="report gallery"):
        zero_shot_classify(ecg, PTBXL, joint, 14.0, "ptbxl", options=opts)
