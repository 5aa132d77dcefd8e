"""Grounded generation on the tiny model: the prefix path carries the subject, the ablation
switches change exactly what they name, and the report evaluation runs every variant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from neuroomics_bridge.data.cohort import Cohort
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.evaluation.bridge_metrics import derangement, evaluate_reports
from neuroomics_bridge.evaluation.factuality import copy_rate, fact_accuracy, retrieval_copy
from neuroomics_bridge.reports.prompts import LAYOUTS, PromptLayout, report_prompt
from neuroomics_bridge.reports.report import Evidence, Neighbour
from neuroomics_bridge.retrieval import ReferenceSet
from neuroomics_bridge.training.prefix import PrefixStage, content_token_weights

CLASSES = ["control", "Parkinson's disease"]
REPORTS = [
    "A woman aged 61; resting tremor. MRI: Mild basal ganglia atrophy. Impression: possible early Parkinson's disease.",
    "72-year-old man with no neurological history. MRI: No focal atrophy. Impression: control subject.",
]


def evidence() -> Evidence:
    return Evidence(
        present=["gene"],
        absent=["brain"],
        probabilities={"Parkinson's disease": 0.8, "control": 0.2},
        neighbours=[Neighbour("ref-1", 0.9, "control", REPORTS[1]), Neighbour("ref-2", 0.8, "control", REPORTS[0])],
        covariates={"age": "72.0", "sex": "M"},
    )


def test_layout_switches_change_exactly_the_lines_they_name() -> None:
    full = report_prompt("Task.", evidence(), "full").splitlines()
    assert full == [
        "Task.",
        "Data missing: brain imaging.",
        "Known: age 72, sex male.",
        "Diagnosis probabilities: Parkinson's disease 0.80, control 0.20.",
        "Report of this subject:",
    ]
    assert report_prompt("Task.", evidence(), "prefix_only").splitlines() == [full[0], full[1], full[2], full[4]]
    assert report_prompt("Task.", evidence(), "evidence_only").splitlines() == full  # the prefix is what differs
    no_covariates = report_prompt("Task.", evidence(), PromptLayout(covariates=False, probabilities=True))
    assert no_covariates.splitlines() == [full[0], full[1], full[3], full[4]]
    retrieval = report_prompt("Task.", evidence(), "retrieval").splitlines()
    assert retrieval[:4] == full[:4]
    quoted = [f"Report of a similar subject: {r}" for r in (REPORTS[1], REPORTS[0])][: LAYOUTS["retrieval"].neighbours]
    assert retrieval[4:] == [*quoted, "Report of this subject (most likely Parkinson's disease):"]


@pytest.fixture(scope="module")
def grounding_setup(make_bridge):
    bridge = make_bridge(seed=3)
    rng = np.random.default_rng(0)
    ids = [f"s-{i}" for i in range(6)]
    cohort = Cohort(
        subject_ids=ids,
        features={"gene": rng.normal(size=(6, 6)) * 3, "brain": rng.normal(size=(6, 4)) * 3},
        reports=[REPORTS[i % 2] for i in range(6)],
        labels=[["Parkinson's disease", "control"][i % 2] for i in range(6)],
        covariates=pd.DataFrame({"age": [61, 72, 65, 70, 58, 80], "sex": list("FMFMFM")}, index=ids),
        phenotypes=pd.DataFrame({"severity": [0.35, 0.0, 0.6, 0.0, 0.9, 0.0]}, index=ids),
    )
    reference = ReferenceSet.build(bridge, cohort)
    return bridge, cohort, reference


def test_generation_from_the_prefix_alone_follows_the_subject(grounding_setup) -> None:
    bridge, cohort, _ = grounding_setup
    inputs = {m: x[[0, 1, 0]] for m, x in cohort.features.items()}  # subject 0, subject 1, subject 0 again
    covariates = cohort.covariates.iloc[[0, 0, 0]]  # the same stated facts for all three rows
    reports = bridge.generate_report(inputs, covariates=covariates, layout="prefix_only", max_new_tokens=10)
    assert reports[0].text == reports[2].text  # the same subject: the same report
    assert reports[0].text != reports[1].text  # another subject's vectors, the same prompt: another report
    assert all(r.layout == "prefix_only" for r in reports)


def test_evidence_only_replaces_the_prefix_by_the_absent_tokens(grounding_setup, monkeypatch) -> None:
    bridge, cohort, _ = grounding_setup
    seen = {}
    generate = bridge.backbone.generate

    def spy(prompts, *, prefix_embeds=None, **options):
        seen.setdefault("prompts", list(prompts))
        seen.setdefault("prefix", prefix_embeds.clone())
        return generate(prompts, prefix_embeds=prefix_embeds, **options)

    monkeypatch.setattr(bridge.backbone, "generate", spy)
    bridge.generate_report(cohort.features, covariates=cohort.covariates, classes=CLASSES, layout="evidence_only")
    absent = {m: np.full_like(x, np.nan) for m, x in cohort.features.items()}
    torch.testing.assert_close(seen["prefix"], bridge.prefix(absent))
    full = bridge.evidence(cohort.features, covariates=cohort.covariates, classes=CLASSES)
    assert seen["prompts"] == [report_prompt(bridge.config.report_prompt, ev, "full") for ev in full]


def test_known_covariates_are_stated_as_evidence(grounding_setup) -> None:
    bridge, cohort, _ = grounding_setup
    [first, second] = bridge.evidence({m: x[:2] for m, x in cohort.features.items()}, covariates=cohort.covariates[:2])
    assert first.covariates == {"age": "61", "sex": "F"} and second.covariates == {"age": "72", "sex": "M"}
    assert "Known: age 61, sex female." in report_prompt("Task.", first)


def test_a_derangement_moves_every_subject() -> None:
    for n in (2, 5, 60):
        order = derangement(n, seed=n)
        assert sorted(order) == list(range(n)) and (order != np.arange(n)).all()


def test_report_evaluation_runs_every_variant_beside_its_controls(grounding_setup) -> None:
    bridge, cohort, reference = grounding_setup
    evaluation = evaluate_reports(bridge, cohort, reference=reference, max_new_tokens=8, seed=1)
    variants = {"full", "prefix_only", "evidence_only"}
    assert set(evaluation.reports) == variants | {f"{v}/shuffled" for v in variants}
    order = derangement(cohort.n_subjects, 1)
    own, shuffled = evaluation.reports["full"], evaluation.reports["full/shuffled"]
    for row, report in enumerate(shuffled):  # another subject's vectors, the subject's own covariates and id
        assert report.subject_id == cohort.subject_ids[row]
        assert report.evidence.probabilities == own[order[row]].evidence.probabilities
        assert report.evidence.covariates == own[row].evidence.covariates
    copied = retrieval_copy([[n.report for n in r.evidence.neighbours] for r in own])
    truth = [{"diagnosis": label} for label in cohort.labels]
    expected = fact_accuracy(copied, truth, classes=sorted(set(cohort.labels)))["diagnosis"]
    assert evaluation.metrics["report/retrieval_copy/diagnosis"] == expected
    assert evaluation.metrics["report/chance/diagnosis"] == 0.5
    neighbours = [[n.report for n in r.evidence.neighbours] for r in own]
    assert evaluation.metrics["report/reference/copied"] == copy_rate(cohort.reports, neighbours)
    for variant in evaluation.reports:
        assert {f"report/{variant}/{k}" for k in ("diagnosis", "severity", "sex", "age", "rouge_l", "copied")} <= set(
            evaluation.metrics
        )


def test_per_row_prompts_score_each_report_after_its_own_prompt(grounding_setup) -> None:
    bridge, cohort, _ = grounding_setup
    features = {m: torch.from_numpy(np.nan_to_num(x[:2])) for m, x in cohort.features.items()}
    present = {m: torch.ones(2, dtype=torch.bool) for m in features}
    prompts = ["Task A.\nReport of this subject:", "A longer task, B.\nKnown: age 72.\nReport of this subject:"]
    together, counts = bridge.report_nll(features, present, REPORTS, prompts)
    for row in range(2):
        alone, count = bridge.report_nll(
            {m: x[row : row + 1] for m, x in features.items()},
            {m: p[row : row + 1] for m, p in present.items()},
            REPORTS[row : row + 1],
            prompts[row : row + 1],
        )
        torch.testing.assert_close(together[row], alone[0], rtol=1e-4, atol=1e-4)
        assert counts[row] == count[0]


def test_the_prefix_stage_draws_layouts_by_seed_epoch_and_subject() -> None:
    stage = PrefixStage(layouts={"full": 0.5, "prefix_only": 0.5})
    drawn = [stage._layout_name(0, 0, i, "train") for i in range(400)]
    assert drawn == [stage._layout_name(0, 0, i, "train") for i in range(400)]  # reproducible
    assert drawn != [stage._layout_name(0, 1, i, "train") for i in range(400)]  # drawn afresh each epoch
    assert 0.4 < drawn.count("full") / 400 < 0.6 and set(drawn) == {"full", "prefix_only"}
    assert {stage._layout_name(0, 0, i, "val") for i in range(20)} == {"prefix_only"}
    with pytest.raises(DataError, match="prompt layout"):
        PrefixStage(layouts={"nonsense": 1.0})


def test_content_weights_go_to_the_tokens_in_few_reports() -> None:
    reports = [[5, 1, 2, 2], [5, 1, 3], [5, 4], [5, 1]]  # 5 in all, 1 in 3/4, 2, 3 and 4 in 1/4 each
    weights = content_token_weights(reports, 8, weight=4.0, max_document_frequency=0.5)
    assert weights.tolist() == [1.0, 1.0, 4.0, 4.0, 4.0, 1.0, 1.0, 1.0]  # 0, 6, 7 never occur: 1
    with pytest.raises(DataError, match="max_document_frequency"):
        content_token_weights(reports, 8, weight=4.0, max_document_frequency=0.0)
    with pytest.raises(DataError, match=r"got -1\.0 and 0\.5"):
        PrefixStage(content_weight=-1.0)  # refused when the stage is built, not at the first step


def test_token_weights_scale_each_report_token_and_its_count(grounding_setup) -> None:
    bridge, cohort, _ = grounding_setup
    features = {m: torch.from_numpy(np.nan_to_num(x[:2])) for m, x in cohort.features.items()}
    present = {m: torch.ones(2, dtype=torch.bool) for m in features}
    plain, counts = bridge.report_nll(features, present, REPORTS)
    vocab = bridge.backbone.model.get_output_embeddings().weight.shape[0]
    doubled, doubled_counts = bridge.report_nll(features, present, REPORTS, token_weights=torch.full((vocab,), 2.0))
    torch.testing.assert_close(doubled, 2 * plain)
    torch.testing.assert_close(doubled_counts, 2 * counts.float())
    first = bridge.backbone.tokenize(REPORTS[:1], special_tokens=False)[0][0]  # weigh one token id only
    weights = torch.ones(vocab)
    weights[first] = 3.0
    weighted, weighted_counts = bridge.report_nll(features, present, REPORTS, token_weights=weights)
    occurrences = [sum(i == first for i in ids) for ids in bridge.backbone.tokenize(REPORTS, special_tokens=False)]
    assert weighted_counts.tolist() == [c + 2 * n for c, n in zip(counts.tolist(), occurrences, strict=True)]
    assert weighted[0] > plain[0]
