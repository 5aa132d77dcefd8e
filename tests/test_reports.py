"""Reports: label parsing, sections, rendering, and generation on a tiny random backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroomics_bridge.config import BridgeConfig
from neuroomics_bridge.reports import (
    RESEARCH_NOTICE,
    Evidence,
    Neighbour,
    Report,
    parse_label,
    report_prompt,
    split_sections,
)
from neuroomics_bridge.reports.report import covariate_text
from neuroomics_bridge.retrieval import ReferenceSet

CLASSES = ["control", "Alzheimer's disease", "Parkinson's disease", "frontotemporal dementia"]
REPORT = (
    "73-year-old man with slowness of movement. MRI: Marked striatal volume reduction. "
    "Transcriptomics: raised SYT11, DNAJC6 expression. Impression: Parkinson's disease."
)


@pytest.mark.parametrize(
    ("impression", "label"),
    [
        ("Parkinson's disease.", "Parkinson's disease"),
        ("possible early Alzheimer's disease, mild stage", "Alzheimer's disease"),
        ("findings suggestive of mild Alzheimer’s disease", "Alzheimer's disease"),
        ("control, no evidence of neurodegeneration.", "control"),
        ("Frontotemporal dementia, moderate stage.", "frontotemporal dementia"),
        ("Alzheimer's or Parkinson's disease", None),
        ("76-year-old man with no complaints.", None),
        ("Parkinson's disease, symptoms controlled on levodopa.", "Parkinson's disease"),
        ("in keeping with the healthy controls", "control"),
    ],
)
def test_impressions_parse_to_one_class_or_none(impression: str, label: str | None) -> None:
    assert parse_label(impression, CLASSES) == label


def test_free_text_splits_into_impression_and_profiles() -> None:
    sections = split_sections(REPORT, ["gene", "brain"], present=["gene", "brain"])
    assert sections["Impression"] == "Parkinson's disease."
    assert sections["Imaging profile"] == "MRI: Marked striatal volume reduction."
    assert sections["Genetic profile"] == "Transcriptomics: raised SYT11, DNAJC6 expression."
    without_genes = split_sections(REPORT, ["gene", "brain"], present=["brain"])
    assert without_genes["Genetic profile"] == "No gene expression data for this subject."


def sample_report() -> Report:
    evidence = Evidence(
        present=["brain"], absent=["gene"], probabilities={"control": 0.7, "Alzheimer's disease": 0.3},
        neighbours=[Neighbour("sub-9", 0.81, "control", "A <b>bold</b> report.")],
    )  # fmt: skip
    sections = split_sections(REPORT, ["gene", "brain"], present=["brain"])
    return Report("sub-1", sections, evidence, model="tiny (abc)", adapters="sha256:def", label="Parkinson's disease")


def test_every_rendering_carries_the_notice_and_the_evidence() -> None:
    report = sample_report()
    markdown, page, data = report.to_markdown(), report.to_html(), json.loads(report.to_json())
    for rendered in (markdown, page):
        assert RESEARCH_NOTICE in rendered and "sub-9" in rendered and "missing: gene" in rendered
        assert rendered.index(RESEARCH_NOTICE) < rendered.index("Impression")  # before any of the report
    assert data["notice"] == RESEARCH_NOTICE and data["evidence"]["absent"] == ["gene"]
    assert next(iter(data)) == "notice"  # the first key of reports.jsonl records too
    for rendered in (markdown, page):  # texts are escaped: Markdown renderers pass raw HTML through
        assert "<b>bold</b>" not in rendered and "&lt;b&gt;bold&lt;/b&gt;" in rendered


def test_an_age_band_is_stated_as_given() -> None:
    report = sample_report()
    report.evidence.covariates = {"age": "70-75", "sex": "F"}  # a cohort that records ages in bands
    assert covariate_text(report.evidence.covariates) == "age 70-75, sex female"
    assert "known: age 70-75, sex female" in report.to_markdown() and "age 70-75" in report.to_html()
    assert "Known: age 70-75, sex female." in report_prompt("Clinical reports.", report.evidence, "retrieval")


def test_the_prompt_states_the_evidence() -> None:
    prompt = report_prompt("Clinical reports.", sample_report().evidence, "retrieval")
    assert "Data missing: gene expression." in prompt and "Report of a similar subject: A <b>bold</b> report." in prompt
    assert "Diagnosis probabilities: control 0.70, Alzheimer's disease 0.30." in prompt
    assert prompt.index("Diagnosis probabilities") < prompt.index("Report of a similar subject")
    assert prompt.endswith("Report of this subject (most likely control):")
    assert report_prompt("Clinical reports.") == "Clinical reports.\nReport of this subject:"


@pytest.fixture(scope="module")
def tiny_bridge_and_data(make_bridge):
    bridge = make_bridge({"gene": 4, "brain": 3}, BridgeConfig(embed_dim=8, head_hidden=16, prefix_tokens=2), seed=0)
    rng = np.random.default_rng(0)
    from neuroomics_bridge.data.cohort import Cohort

    reference = Cohort(
        subject_ids=[f"ref-{i}" for i in range(6)],
        features={"gene": rng.normal(size=(6, 4)), "brain": rng.normal(size=(6, 3))},
        reports=[REPORT] * 6,
        labels=["Parkinson's disease"] * 3 + ["control"] * 3,
    )
    inputs = {"gene": rng.normal(size=(3, 4)).astype(np.float32), "brain": rng.normal(size=(3, 3)).astype(np.float32)}
    inputs["gene"][1] = np.nan  # subject 1 has no expression data
    return bridge, ReferenceSet.build(bridge, reference), inputs


def test_bad_report_inputs_are_data_errors_that_say_what_was_expected(tiny_bridge_and_data) -> None:
    from neuroomics_bridge import DataError

    bridge, _, inputs = tiny_bridge_and_data
    with pytest.raises(DataError, match=r"gene: expected shape \(n, d\), one row per subject, got \(4,\)"):
        bridge.evidence({"gene": inputs["gene"][0]})
    with pytest.raises(DataError, match=r"expected 3 values per column, got \{'age': 3, 'sex': 1\}"):
        bridge.evidence(inputs, covariates={"age": [60, 70, 80], "sex": ["F"]})
    with pytest.raises(DataError, match=r"unknown modality 'rna'; this bridge has \['gene', 'brain'\]"):
        bridge.zero_shot("rna", inputs["gene"], ["AD", "PD"])
    with pytest.raises(DataError, match=r"zero_shot\('brain'\): expected at least one class text"):
        bridge.zero_shot("brain", inputs["brain"], [])


def test_generated_reports_have_sections_evidence_provenance_and_notice(tiny_bridge_and_data) -> None:
    bridge, reference, inputs = tiny_bridge_and_data
    reports = bridge.generate_report(
        inputs, subject_ids=["a", "b", "c"], reference=reference, classes=CLASSES, max_new_tokens=12
    )
    assert [r.subject_id for r in reports] == ["a", "b", "c"]
    for report in reports:
        assert report.notice == RESEARCH_NOTICE
        assert list(report.sections) == ["Impression", "Genetic profile", "Imaging profile"]
        assert len(report.evidence.neighbours) == 3 and set(report.evidence.probabilities) == set(CLASSES)
        assert report.model.startswith(bridge.backbone.name) and report.adapters == bridge.adapter_id
    assert reports[1].evidence.absent == ["gene"] and reports[1].evidence.present == ["brain"]
    assert reports[1].sections["Genetic profile"] == "No gene expression data for this subject."


def test_greedy_reports_are_deterministic(tiny_bridge_and_data) -> None:
    bridge, reference, inputs = tiny_bridge_and_data
    first = bridge.generate_report(inputs, reference=reference, classes=CLASSES, max_new_tokens=12)
    second = bridge.generate_report(inputs, reference=reference, classes=CLASSES, max_new_tokens=12)
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]


def test_report_variants_are_decoded_together_and_match_each_written_alone(tiny_bridge_and_data, monkeypatch) -> None:
    import anndata as ad

    from neuroomics_bridge import DataError

    bridge, reference, inputs = tiny_bridge_and_data
    shuffled = {m: x[[1, 2, 0]] for m, x in inputs.items()}
    variants = {"full": (inputs, "full"), "prefix_only/shuffled": (shuffled, "prefix_only")}
    options = {"subject_ids": ["a", "b", "c"], "reference": reference, "classes": CLASSES, "max_new_tokens": 6}
    decoded: list[int] = []
    generate = bridge.backbone.generate

    def recorded(prompts, **kwargs):
        decoded.append(len(prompts))
        return generate(prompts, **kwargs)

    monkeypatch.setattr(bridge.backbone, "generate", recorded)
    together = bridge.generate_report_variants(variants, **options)
    assert decoded[0] == 6  # both variants' findings in one pass (then, maybe, one impression pass)
    assert len(decoded) <= 2 and list(together) == list(variants)
    monkeypatch.undo()
    for name, (rows, layout) in variants.items():
        alone = bridge.generate_report(rows, layout=layout, **options)
        assert [r.to_dict() for r in together[name]] == [r.to_dict() for r in alone]
    assert [r.subject_id for r in together["prefix_only/shuffled"]] == ["a", "b", "c"]
    assert {r.layout for r in together["prefix_only/shuffled"]} == {"prefix_only"}
    assert together["prefix_only/shuffled"][0].evidence.present == ["brain"]  # subject b's vectors, row a
    fewer = {**variants, "evidence_only": ({m: x[:2] for m, x in inputs.items()}, "evidence_only")}
    with pytest.raises(DataError, match=r"one row per subject, got rows \{'full': 3, .*'evidence_only': 2\}"):
        bridge.generate_report_variants(fewer, classes=CLASSES, max_new_tokens=2)
    cells = ad.AnnData(np.zeros((3, 2), np.float32), obsm=dict(inputs))
    with pytest.raises(DataError, match=r"variant 'cells' is an AnnData; expected modality -> \(n, d\) arrays"):
        bridge.generate_report_variants({"cells": (cells, "full")}, max_new_tokens=2)


def test_reference_set_round_trips(tiny_bridge_and_data, tmp_path) -> None:
    bridge, reference, inputs = tiny_bridge_and_data
    reference.save(tmp_path / "refs")
    restored = ReferenceSet.load(tmp_path / "refs")
    query = {"brain": bridge.embed("brain", inputs["brain"][:1])[0]}
    assert restored.neighbours(query, 2) == reference.neighbours(query, 2)


def test_a_subject_in_the_reference_set_is_never_its_own_neighbour(tiny_bridge_and_data) -> None:
    from neuroomics_bridge import DataError
    from neuroomics_bridge.data.cohort import Cohort

    bridge, _, inputs = tiny_bridge_and_data
    ids = ["a", "b", "c"]
    # The reference set holds the very subjects reported, each with a report naming it.
    own = Cohort(
        subject_ids=ids,
        features={m: np.nan_to_num(x) for m, x in inputs.items()},
        reports=[f"Report of {s}." for s in ids],
        labels=["control"] * 3,
    )
    reference = ReferenceSet.build(bridge, own)
    query = {"brain": bridge.embed("brain", inputs["brain"][:1])[0]}
    assert reference.neighbours(query, 1)[0].subject_id == "a"  # its own vector is the nearest
    assert sorted(n.subject_id for n in reference.neighbours(query, 3, exclude=["a"])) == ["b", "c"]
    evidence = bridge.evidence(inputs, reference=reference, neighbours=3, subject_ids=ids)
    for subject, ev in zip(ids, evidence, strict=True):
        assert sorted(n.subject_id for n in ev.neighbours) == sorted(set(ids) - {subject})
    reports = bridge.generate_report(inputs, subject_ids=ids, reference=reference, layout="retrieval", max_new_tokens=4)
    for subject, report in zip(ids, reports, strict=True):
        assert subject not in {n.subject_id for n in report.evidence.neighbours}
    with pytest.raises(DataError, match="subject_ids: expected 3 ids, one per row of the inputs, got 2"):
        bridge.evidence(inputs, reference=reference, subject_ids=ids[:2])
