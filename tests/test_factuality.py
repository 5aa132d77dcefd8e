"""Report factuality: the fact parsers, per-category accuracy, copy rate and the retrieval baseline."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from neuroomics_bridge.data.synthetic import DIAGNOSES, severity_grade, synthetic_cohort
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.evaluation.factuality import (
    FACT_CATEGORIES,
    cohort_facts,
    copy_rate,
    fact_accuracy,
    parse_age,
    parse_categorical,
    parse_diagnosis,
    parse_findings_family,
    parse_severity,
    parse_sex,
    retrieval_copy,
    synthetic_facts,
)

CONTROL, AD, PD, FTD = DIAGNOSES


# ------------------------------------------------------------------------------ severity_grade
@pytest.mark.parametrize(
    ("severity", "grade"),
    [
        (0.0, None),
        (float("nan"), None),
        (0.3, "mild"),
        (0.4499, "mild"),
        (0.45, "moderate"),
        (0.7499, "moderate"),
        (0.75, "marked"),
        (1.0, "marked"),
    ],
)
def test_severity_grade_boundaries(severity, grade):
    assert severity_grade(severity) == grade


# ----------------------------------------------------------------------------- parse_diagnosis
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Impression: findings consistent with Parkinson's disease.", PD),
        ("Impression: possible early Alzheimer's disease.", AD),
        ("Impression: Alzheimer disease.", AD),  # first word, no possessive
        ("Impression: Alzheimer’s disease, marked stage.", AD),  # curly apostrophe
        ("Impression: frontotemporal dementia.", FTD),
        ("Impression: control subject.", CONTROL),
        ("Impression: healthy.", CONTROL),
        ("Impression: no evidence of neurodegeneration.", CONTROL),
        ("Impression: atrophy of uncertain cause.", None),  # unstated
        ("Impression: no evidence of Parkinson's disease.", None),  # negated
        ("Impression: not Parkinson's disease.", None),
        ("Impression: frontotemporal dementia, not Alzheimer's disease.", FTD),
        ("Impression: control, no evidence of Alzheimer's disease.", CONTROL),
        ("Impression: Alzheimer's disease or Parkinson's disease.", None),  # ambiguous
    ],
)
def test_parse_diagnosis(text, expected):
    assert parse_diagnosis(text, DIAGNOSES) == expected


def test_parse_diagnosis_reads_the_last_impression_only():
    text = "History of Parkinson's disease in the family. Impression: draft. Impression: Alzheimer's disease."
    assert parse_diagnosis(text, DIAGNOSES) == AD
    assert parse_diagnosis("A report that names frontotemporal dementia without a heading.", DIAGNOSES) == FTD


def test_parse_diagnosis_short_first_words_need_the_full_name():
    classes = ["Lewy body dementia", CONTROL]
    assert parse_diagnosis("Impression: Lewy features.", classes) is None
    assert parse_diagnosis("Impression: Lewy body dementia.", classes) == "Lewy body dementia"
    assert parse_diagnosis("Impression: Alzheimer's disease.", classes) is None  # not a class here


# ------------------------------------------------------------------------------ parse_severity
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MRI: Mild bilateral hippocampal atrophy.", "mild"),
        ("MRI: Moderate basal ganglia atrophy. Impression: PD, moderate stage.", "moderate"),
        ("MRI: Marked frontotemporal grey matter loss.", "marked"),
        ("MRI: markedly reduced hippocampi.", "marked"),
        ("MRI: severe atrophy.", "marked"),
        ("Impression: possible early Alzheimer's disease.", None),  # hedges are no grade
        ("MRI: No focal atrophy.", None),  # unstated
        ("MRI: mild hippocampal atrophy. Impression: marked Alzheimer's disease.", None),  # ambiguous
        ("MRI: hippocampal atrophy without marked change.", None),  # negated
    ],
)
def test_parse_severity(text, expected):
    assert parse_severity(text) == expected


# ----------------------------------------------------------------------------------- parse_sex
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72-year-old woman with memory decline.", "F"),
        ("72-year-old man with memory decline.", "M"),
        ("A female patient; she reports tremor.", "F"),
        ("A male patient; he reports tremor.", "M"),
        ("The patient reports tremor.", None),  # unstated ("the" is not "he")
        ("A woman attended with her husband, a man of 80.", None),  # both
    ],
)
def test_parse_sex(text, expected):
    assert parse_sex(text) == expected


# ----------------------------------------------------------------------------------- parse_age
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72-year-old woman.", 72),
        ("A man aged 64; tremor.", 64),
        ("Age 81, female.", 81),
        ("Age: 59.", 59),
        ("The patient is 90 years old.", 90),
        ("A woman with age-appropriate grey matter volume, moderate stage 3.", None),  # absent
        ("72-year-old woman, aged 75 at the scan.", None),  # two different ages
        ("72-year-old woman, aged 72 at the scan.", 72),
    ],
)
def test_parse_age(text, expected):
    assert parse_age(text) == expected


# ----------------------------------------------------------------------- parse_findings_family
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MRI: Mild bilateral hippocampal atrophy.", AD),
        ("MRI: Moderate medial temporal lobe atrophy with posterior cingulate thinning.", AD),
        ("MRI: Marked grey matter loss in the putamen and caudate.", PD),
        ("MRI: Mild striatal volume reduction with midbrain involvement.", PD),
        ("MRI: Moderate volume loss of the frontal poles and temporal poles.", FTD),
        ("MRI: Marked frontal and anterior temporal atrophy.", FTD),
        ("MRI: Unremarkable grey matter.", CONTROL),
        ("MRI: Age-appropriate grey matter volume.", CONTROL),
        ("MRI: atrophy.", None),  # unstated
        ("MRI: hippocampal and putamen atrophy.", None),  # mixed families
        ("MRI: no hippocampal atrophy.", None),  # negated
        ("MRI: no focal atrophy. Impression: frontotemporal dementia.", CONTROL),  # impression not read
    ],
)
def test_parse_brain_findings(text, expected):
    assert parse_findings_family(text, "brain") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Expression profile shows up-regulation of APOE, CLU, TREM2.", AD),
        ("Transcriptomics: raised SNCA, LRRK2, GBA1 expression.", PD),
        ("Transcriptomics: raised C9orf72 and GRN expression.", FTD),
        ("Expression profile within the reference range.", CONTROL),
        ("No disease gene programme is up-regulated.", CONTROL),
        ("Raised apoe expression.", None),  # symbols are case-sensitive
        ("Raised APPL1 expression.", None),  # whole symbols only (APP is not APPL1)
        ("Raised APOE and SNCA expression.", None),  # mixed families
        ("No up-regulation of APOE.", None),  # negated
        ("Mild hippocampal atrophy. Impression: Parkinson's disease.", None),  # no gene words
    ],
)
def test_parse_gene_findings(text, expected):
    assert parse_findings_family(text, "gene") == expected


def test_parse_findings_family_rejects_unknown_modalities():
    with pytest.raises(DataError, match="'eeg'"):
        parse_findings_family("text", "eeg")


# --------------------------------------------------------------------------- parse_categorical
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Scanned at SITE-B.", "site-B"),
        ("Scanned at site-A.", "site-A"),
        ("Scanned at site-AB.", None),  # whole words only
        ("Scanned at site-A and site-B.", None),  # several
        ("Not scanned at site-A.", None),  # negated
        ("No site given.", None),
    ],
)
def test_parse_categorical(text, expected):
    assert parse_categorical(text, ["site-A", "site-B"]) == expected


def test_parse_categorical_prefers_the_longer_value():
    values = ["dementia", "frontotemporal dementia"]
    assert parse_categorical("Consistent with frontotemporal dementia.", values) == "frontotemporal dementia"
    assert parse_categorical("Consistent with dementia.", values) == "dementia"


# ------------------------------------------------------------------------------- fact_accuracy
def test_fact_accuracy_on_a_hand_computed_example():
    facts = [
        {
            "diagnosis": AD,
            "severity": "moderate",
            "sex": "F",
            "age": 70,
            "gene_findings": AD,
            "brain_findings": AD,
            "site": "site-A",
        },
        {"diagnosis": CONTROL, "sex": "M", "age": 60, "brain_findings": CONTROL},
        {
            "diagnosis": PD,
            "severity": "mild",
            "sex": "F",
            "age": 80,
            "gene_findings": PD,
            "brain_findings": PD,
            "site": "site-B",
        },
    ]
    texts = [
        # all right; age off by exactly the 5-year tolerance; site unstated
        "75-year-old woman. MRI: moderate hippocampal atrophy. Raised APOE, CLU expression. "
        "Impression: Alzheimer's disease.",
        # age off by 6 years
        "A man aged 66; no complaints. MRI: no focal atrophy. Impression: control subject.",
        # diagnosis negated, wrong grade, age unstated
        "A woman with tremor, scanned at site-B. MRI: marked putamen atrophy. Raised SNCA expression. "
        "Impression: no evidence of Parkinson's disease.",
    ]
    accuracy = fact_accuracy(texts, facts, classes=DIAGNOSES)
    assert list(accuracy) == [*FACT_CATEGORIES, "site"]
    assert accuracy == {
        "diagnosis": pytest.approx(2 / 3),
        "severity": pytest.approx(1 / 2),
        "sex": pytest.approx(1.0),
        "age": pytest.approx(1 / 3),
        "gene_findings": pytest.approx(1.0),
        "brain_findings": pytest.approx(1.0),
        "site": pytest.approx(1 / 2),
    }


def test_fact_accuracy_is_nan_for_a_category_nobody_has():
    accuracy = fact_accuracy(["Impression: control."], [{"diagnosis": CONTROL}], classes=DIAGNOSES)
    assert accuracy["diagnosis"] == 1.0
    assert all(math.isnan(accuracy[c]) for c in FACT_CATEGORIES if c != "diagnosis")


def test_fact_accuracy_checks_its_inputs():
    with pytest.raises(DataError, match="2 texts but 1"):
        fact_accuracy(["a", "b"], [{}], classes=DIAGNOSES)
    with pytest.raises(DataError, match="not among classes"):
        fact_accuracy(["a"], [{"diagnosis": "Huntington's disease"}], classes=DIAGNOSES)
    with pytest.raises(DataError, match=r"texts\[0\] expected a str"):
        fact_accuracy([None], [{}], classes=DIAGNOSES)


# ------------------------------------------------------------------------ copy rate, baseline
def test_copy_rate_against_a_hand_computed_value():
    texts = [
        "Mild hippocampal atrophy. Raised APOE expression! Impression: Alzheimer's disease.",
        "Mild hippocampal atrophy with more words. Impression: control.",
        "Impression: control.",
    ]
    neighbours = [
        ["mild   HIPPOCAMPAL atrophy", "Other finding. Raised APOE expression."],
        ["Mild hippocampal atrophy."],  # the generated sentence only starts like it
        ["Impression: control."],
    ]
    # counted (impressions left out): 2 + 1 + 0 sentences; copied verbatim: 2 + 0
    assert copy_rate(texts, neighbours) == pytest.approx(2 / 3)


def test_copy_rate_is_nan_without_sentences_and_checks_lengths():
    assert math.isnan(copy_rate(["Impression: control.", ""], [["x"], []]))
    with pytest.raises(DataError, match="1 texts but 2"):
        copy_rate(["a"], [[], []])


def test_retrieval_copy_takes_the_top_neighbour():
    assert retrieval_copy([["first", "second"], [], ["only"]]) == ["first", "", "only"]
    with pytest.raises(DataError, match=r"neighbour_reports\[0\]"):
        retrieval_copy(["a report, not a list of reports"])


# ------------------------------------------------------------------------------------- facts
def _cohort(**tables):
    ids = ["s0", "s1", "s2"]
    return SimpleNamespace(
        subject_ids=ids,
        labels=[CONTROL, AD, None],
        covariates=pd.DataFrame(tables.get("covariates", {"age": [70.0, np.nan, 61.0]}), index=ids),
        phenotypes=pd.DataFrame(tables.get("phenotypes", {"severity": [0.0, 0.8, 0.5]}), index=ids),
        features={},
    )


def test_cohort_facts_takes_labels_and_named_columns():
    cohort = _cohort(covariates={"age": [70.0, np.nan, 61.0], "sex": ["female", "M", None], "site": ["a", "b", "a"]})
    facts = cohort_facts(cohort, columns=("age", "sex", "site", "severity"))
    assert facts == [
        {"diagnosis": CONTROL, "age": 70.0, "sex": "F", "site": "a", "severity": "0.0"},
        {"diagnosis": AD, "sex": "M", "site": "b", "severity": "0.8"},
        {"age": 61.0, "site": "a", "severity": "0.5"},
    ]


def test_cohort_facts_errors_name_the_column():
    with pytest.raises(DataError, match="'apoe'"):
        cohort_facts(_cohort(), columns=("apoe",))
    with pytest.raises(DataError, match="column 'sex' of subject s1"):
        cohort_facts(_cohort(covariates={"sex": ["F", "unknown", "M"]}), columns=("sex",))
    with pytest.raises(DataError, match="reserved"):
        cohort_facts(_cohort(), columns=("diagnosis",))


def test_synthetic_facts_grades_patients_and_follows_modalities():
    cohort = _cohort(covariates={"age": [70.0, 75.0, 61.0], "sex": ["F", "M", "F"]})
    cohort.labels = [CONTROL, AD, PD]
    facts = synthetic_facts(cohort, present={"gene": [True, False, True], "brain": [True, True, True]})
    # controls have no severity fact
    assert facts[0] == {
        "diagnosis": CONTROL,
        "age": 70.0,
        "sex": "F",
        "gene_findings": CONTROL,
        "brain_findings": CONTROL,
    }
    assert facts[1]["severity"] == "marked" and "gene_findings" not in facts[1]
    assert facts[2]["severity"] == "moderate" and facts[2]["gene_findings"] == facts[2]["brain_findings"] == PD
    with pytest.raises(DataError, match="'eeg'"):
        synthetic_facts(cohort, present={"eeg": [True] * 3})
    with pytest.raises(DataError, match="2 entries, expected 3"):
        synthetic_facts(cohort, present={"gene": [True, True]})


def test_named_columns_are_scored_beside_the_synthetic_facts_and_a_text_severity_is_a_users_column():
    from neuroomics_bridge.evaluation.bridge_metrics import _default_facts

    covariates = {"age": [70.0, 75.0, 61.0], "sex": ["F", "M", "F"], "site": ["a", "b", "a"]}
    cohort = _cohort(covariates=covariates)
    cohort.labels = [CONTROL, AD, PD]
    facts = _default_facts(cohort, ["site"])
    assert facts[1]["severity"] == "marked" and [f["site"] for f in facts] == ["a", "b", "a"]
    graded = _cohort(covariates=covariates, phenotypes={"severity": ["none", "severe", "mild"]})
    graded.labels = cohort.labels
    assert [f.get("severity") for f in _default_facts(graded, ["severity"])] == ["none", "severe", "mild"]
    assert all("severity" not in f for f in _default_facts(graded, []))  # not graded as a number


def test_the_generators_reports_state_all_their_facts():
    cohort = synthetic_cohort(40, seed=1)
    facts = synthetic_facts(cohort)
    assert {f["diagnosis"] for f in facts} == set(DIAGNOSES)
    accuracy = fact_accuracy(cohort.reports, facts, classes=DIAGNOSES)
    assert accuracy == dict.fromkeys(FACT_CATEGORIES, 1.0)
