"""Report factuality per fact category: does a generated report state each known fact correctly?

In the spirit of FORTE's category F1 for brain reports: every subject has known facts (its
diagnosis, severity grade, sex, age, and per modality the disorder its findings point to), each
report is parsed for the same facts, and :func:`fact_accuracy` gives, per category, the share
of the subjects having that fact whose report states it correctly. A fact the report does not
state, or states ambiguously (two different values), counts as wrong.

How each category is parsed (after ``’`` -> ``'``):

- ``diagnosis`` (:func:`parse_diagnosis`): the one class the impression (the text after the
  last ``Impression:``, else the whole text) names, case-insensitively, by its full name or by
  its first word when that has at least 5 letters ("Alzheimer's", "Alzheimer", "Alzheimers"),
  as :func:`neuroomics_bridge.reports.parse_label` does; the class ``control`` is named by
  "control", "healthy" or "no evidence of neurodegeneration".
- ``severity`` (:func:`parse_severity`): "mild", "moderate" or "marked" (also their ``-ly``
  forms; "severe" counts as "marked") anywhere in the text; hedges ("possible", "early") are
  no grade. Only patients have this fact (:func:`neuroomics_bridge.data.synthetic.severity_grade`).
- ``sex`` (:func:`parse_sex`): ``"F"`` for woman / women / female / girl / lady / she / her,
  ``"M"`` for man / men / male / boy / gentleman / he / him / his (whole words, so "woman"
  is not "man"); both or neither: unstated.
- ``age`` (:func:`parse_age`): the number in "72-year-old", "72 years old", "aged 72",
  "age 72" or "age: 72"; right when within ``AGE_TOLERANCE`` (5) years.
- ``gene_findings`` / ``brain_findings`` (:func:`parse_findings_family`): in the text before
  the impression, which diagnosis's vocabulary the findings use: the genes of its programme in
  ``GENE_PROGRAMMES`` (whole, case-sensitive symbols) or the regions the synthetic generator
  describes; control for "within the reference range" / "no disease gene programme" and "no
  focal atrophy" / "age-appropriate" / "unremarkable". The truth is the subject's diagnosis.
- a user's categorical column (:func:`parse_categorical`): the one value of the column the text
  names as a whole word, case-insensitively.

A term is not stated when a negation cue ("no", "not", "without", "negative for", "absence
of", "free of", "rule(d) out") precedes it in the same clause (clauses end at ``.,;:!?`` and
"but" / "however" / "although"), so "no evidence of Parkinson's disease" does not name
Parkinson's disease; a term inside a longer term of another value (a value "dementia" inside
"frontotemporal dementia") does not count either. Several different values stated: ambiguous.

:func:`copy_rate` measures how much of a report is copied from the retrieved reference
reports in its prompt, and :func:`retrieval_copy` is the baseline that copies the top one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from neuroomics_bridge.data.synthetic import DIAGNOSES, GENE_PROGRAMMES, severity_grade
from neuroomics_bridge.data.text import sentences
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.reports.sections import CONTROL_WORDS

__all__ = [
    "AGE_TOLERANCE",
    "FACT_CATEGORIES",
    "cohort_facts",
    "copy_rate",
    "fact_accuracy",
    "parse_age",
    "parse_categorical",
    "parse_diagnosis",
    "parse_findings_family",
    "parse_severity",
    "parse_sex",
    "retrieval_copy",
    "synthetic_facts",
]

FACT_CATEGORIES = ("diagnosis", "severity", "sex", "age", "gene_findings", "brain_findings")
AGE_TOLERANCE = 5  # years: a stated age this close to the truth is right
_MODALITIES = ("gene", "brain")

_CONTROL, _AD, _PD, _FTD = DIAGNOSES
_CONTROL_TERMS = CONTROL_WORDS
# The regions of synthetic._IMAGING (atrophy centres: synthetic.ATROPHY_CENTRES_MM), matched at a word start.
_BRAIN_TERMS = {
    _CONTROL: ("no focal atrophy", "age-appropriate", "unremarkable"),
    _AD: ("hippocamp", "medial temporal", "posterior cingulate"),
    _PD: ("putamen", "caudate", "basal ganglia", "striat", "midbrain", "substantia nigra"),
    _FTD: ("frontal pole", "frontotemporal", "anterior temporal", "temporal pole", "anterior cingulate"),
}
_GENE_CONTROL_TERMS = ("within the reference range", "no disease gene programme", "no disease gene program")
_GRADE_PATTERNS = {
    grade: [re.compile(rf"\b{word}(?:ly)?\b", re.IGNORECASE) for word in words]
    for grade, words in {"mild": ("mild",), "moderate": ("moderate",), "marked": ("marked", "severe")}.items()
}
_SEX_WORDS = {
    "F": ("woman", "women", "female", "girl", "lady", "she", "her"),
    "M": ("man", "men", "male", "boy", "gentleman", "he", "him", "his"),
}
_SEX_CODES = {"f": "F", "female": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
_AGE = re.compile(r"(?<!\d)(\d{1,3})\s*-?\s*years?\s*-?\s*old\b|\baged?\s*:?\s*(\d{1,3})(?!\d)", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:no|not|without|negative for|absence of|free of|rul(?:e|es|ed) out)\b", re.IGNORECASE)
_CLAUSE_END = re.compile(r"[.,;:!?]|\b(?:but|however|although)\b", re.IGNORECASE)
_IMPRESSION = "impression:"


def _normalised(text: str) -> str:
    return text.replace("’", "'")


def _whole(term: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", flags)


_BRAIN_PATTERNS = {
    family: [re.compile(rf"(?<!\w){re.escape(term)}", re.IGNORECASE) for term in terms]
    for family, terms in _BRAIN_TERMS.items()
}
_GENE_PATTERNS = {
    _CONTROL: [_whole(term, re.IGNORECASE) for term in _GENE_CONTROL_TERMS],
    **{family: [_whole(gene) for gene in genes] for family, genes in GENE_PROGRAMMES.items()},
}


# ---------------------------------------------------------------------------------- parsers
def parse_diagnosis(text: str, classes: Sequence[str]) -> str | None:
    """The one class of ``classes`` that the report's impression names.

    Parameters
    ----------
    text
        A report; only what follows its last ``Impression:`` is read (the whole text if none).
    classes
        The diagnoses a report may name; a class named ``control`` also matches "healthy" and
        "no evidence of neurodegeneration".

    Returns
    -------
    str or None
        The class, or ``None`` when none is named (negated mentions do not count) or several are.
    """
    text = _normalised(text)
    marker = text.lower().rfind(_IMPRESSION)
    impression = text[marker + len(_IMPRESSION) :] if marker >= 0 else text
    return _stated(impression, {label: _class_patterns(label) for label in classes})


def parse_severity(text: str) -> str | None:
    """The severity grade a report states: ``"mild"``, ``"moderate"`` or ``"marked"`` (or ``None``).

    "severe" counts as "marked" and ``-ly`` forms as their grade; negated grades do not count,
    and two different grades are ambiguous (``None``).
    """
    return _stated(_normalised(text), _GRADE_PATTERNS)


def parse_sex(text: str) -> str | None:
    """``"F"`` or ``"M"`` from the sexed words of a report (woman, she ... / man, he ...), else ``None``.

    Words match whole, so "woman" is not also "man"; a report using both kinds is ambiguous.
    """
    found = {sex for sex, words in _SEX_WORDS.items() if re.search(rf"\b(?:{'|'.join(words)})\b", text, re.IGNORECASE)}
    return found.pop() if len(found) == 1 else None


def parse_age(text: str) -> int | None:
    """The age a report states ("72-year-old", "72 years old", "aged 72", "age 72"), else ``None``.

    Two different stated ages are ambiguous (``None``).
    """
    found = {int(match.group(1) or match.group(2)) for match in _AGE.finditer(text)}
    return found.pop() if len(found) == 1 else None


def parse_findings_family(text: str, modality: str) -> str | None:
    """The diagnosis whose vocabulary a report's findings of ``modality`` use.

    Parameters
    ----------
    text
        A report; only the text before its last ``Impression:`` is read (the whole text if none).
    modality
        ``"gene"``: programme genes of ``GENE_PROGRAMMES`` named as whole, case-sensitive
        symbols, control for "within the reference range" / "no disease gene programme".
        ``"brain"``: the regions of each disorder's atrophy, control for "no focal atrophy",
        "age-appropriate" or "unremarkable".

    Returns
    -------
    str or None
        A name from ``DIAGNOSES``, or ``None`` when the findings use no family's words or mix them.
    """
    if modality not in _MODALITIES:
        raise DataError(f"parse_findings_family: modality expected one of {list(_MODALITIES)}, got {modality!r}")
    text = _normalised(text)
    marker = text.lower().rfind(_IMPRESSION)
    findings = text[:marker] if marker >= 0 else text
    return _stated(findings, _GENE_PATTERNS if modality == "gene" else _BRAIN_PATTERNS)


def parse_categorical(text: str, values: Sequence[str]) -> str | None:
    """The one of ``values`` (a categorical column's values) that the text names, else ``None``.

    A value matches as a whole word, case-insensitively; negated mentions do not count and a
    value inside a longer named value does not count; several different values: ``None``.
    """
    return _stated(_normalised(text), {value: [_whole(value, re.IGNORECASE)] for value in values})


# ------------------------------------------------------------------------------------ facts
def cohort_facts(cohort: Any, *, columns: Sequence[str] = ()) -> list[dict[str, object]]:
    """Each subject's known facts in a user's cohort: its label as ``diagnosis``, and ``columns``.

    Parameters
    ----------
    cohort
        Anything with ``subject_ids``, ``labels`` (or ``None``) and ``covariates`` /
        ``phenotypes`` tables (pandas, one row per subject), such as a
        :class:`~neuroomics_bridge.data.cohort.Cohort`.
    columns
        Categorical columns of the covariates (looked up first) or phenotypes. ``age`` becomes
        a number and ``sex`` ``"F"`` / ``"M"`` (from F/M, female/male or woman/man), parsed as
        the built-in categories; any other column's values are compared as text.

    Returns
    -------
    list of dict
        One dict per subject, category -> true value; a missing value is no fact.
    """
    reserved = sorted(set(columns) & {"diagnosis", "gene_findings", "brain_findings"})
    if reserved:
        raise DataError(f"cohort_facts: columns {reserved} are reserved (diagnosis comes from the labels)")
    facts: list[dict[str, object]] = [{} for _ in cohort.subject_ids]
    if cohort.labels is not None:
        for fact, label in zip(facts, cohort.labels, strict=True):
            if label is not None:
                fact["diagnosis"] = str(label)
    for column in columns:
        for subject, fact, value in zip(cohort.subject_ids, facts, _column(cohort, column), strict=True):
            if value is not None:
                fact[column] = _fact_value(column, value, subject)
    return facts


def synthetic_facts(cohort: Any, *, present: Mapping[str, Sequence[bool]] | None = None) -> list[dict[str, object]]:
    """Each subject's known facts in a cohort drawn by :func:`~neuroomics_bridge.datasets.synthetic_cohort`.

    Parameters
    ----------
    cohort
        A cohort (duck-typed as in :func:`cohort_facts`) with diagnoses as ``labels``, ``age``
        and ``sex`` covariates and a ``severity`` phenotype.
    present
        Modality (``"gene"``, ``"brain"``) -> per-subject mask of who has its data; only they
        have that modality's findings fact. By default the modalities the cohort has encoded
        (``cohort.present``), or, for a raw cohort without features, both for everyone (the
        generator's reports describe both).

    Returns
    -------
    list of dict
        Per subject: ``diagnosis``, ``sex``, ``age``, ``severity`` (patients only: the grade of
        :func:`~neuroomics_bridge.data.synthetic.severity_grade`) and ``<modality>_findings``
        (the diagnosis, which the findings should point to).
    """
    if cohort.labels is None:
        raise DataError("synthetic_facts: the cohort has no labels (diagnoses)")
    facts = cohort_facts(cohort, columns=("age", "sex"))
    masks = _present(cohort) if present is None else present
    unknown = sorted(set(masks) - set(_MODALITIES))
    if unknown:
        raise DataError(f"synthetic_facts: present has unknown modalities {unknown}; expected {list(_MODALITIES)}")
    for modality, mask in masks.items():
        if len(mask) != len(facts):
            raise DataError(f"synthetic_facts: present[{modality!r}] has {len(mask)} entries, expected {len(facts)}")
    for i, (fact, severity) in enumerate(zip(facts, _column(cohort, "severity"), strict=True)):
        grade = None if severity is None or fact.get("diagnosis") == _CONTROL else severity_grade(float(severity))
        if grade is not None:
            fact["severity"] = grade
        for modality, mask in masks.items():
            if mask[i] and "diagnosis" in fact:
                fact[f"{modality}_findings"] = fact["diagnosis"]
    return facts


# --------------------------------------------------------------------------------- metrics
def fact_accuracy(
    texts: Sequence[str], facts: Sequence[Mapping[str, object]], *, classes: Sequence[str]
) -> dict[str, float]:
    """Per fact category, the share of the subjects having that fact whose report states it right.

    Parameters
    ----------
    texts
        One generated report per subject.
    facts
        One dict per subject, category -> true value (:func:`synthetic_facts`, :func:`cohort_facts`).
    classes
        The diagnoses a report may name (see :func:`parse_diagnosis`).

    Returns
    -------
    dict
        Every name of ``FACT_CATEGORIES`` (NaN where no subject has the fact), then the other
        categories of ``facts`` in order of appearance. Unstated or ambiguous counts as wrong; an
        age is right within ``AGE_TOLERANCE`` years.
    """
    texts = _texts(texts, "fact_accuracy")
    if len(texts) != len(facts):
        raise DataError(f"fact_accuracy: {len(texts)} texts but {len(facts)} subjects' facts")
    outside = sorted({str(f["diagnosis"]) for f in facts if "diagnosis" in f} - set(classes))
    if outside:
        raise DataError(f"fact_accuracy: diagnoses {outside} are not among classes {list(classes)}")
    categories = list(FACT_CATEGORIES) + list(dict.fromkeys(k for f in facts for k in f if k not in FACT_CATEGORIES))
    accuracy = {}
    for category in categories:
        having = [(text, fact[category]) for text, fact in zip(texts, facts, strict=True) if category in fact]
        values = sorted({str(truth) for _, truth in having})
        right = [_states(text, category, truth, classes, values) for text, truth in having]
        accuracy[category] = sum(right) / len(right) if right else math.nan
    return accuracy


def copy_rate(texts: Sequence[str], neighbour_reports: Sequence[Sequence[str]]) -> float:
    """The share of generated sentences copied verbatim from the subject's retrieved reports.

    Parameters
    ----------
    texts
        One generated report per subject, split with :func:`~neuroomics_bridge.data.text.sentences`;
        sentences starting with "Impression" are left out (a diagnosis is expected to recur).
    neighbour_reports
        Per subject, the reports of the reference subjects its prompt showed.

    Returns
    -------
    float
        Copied sentences over all counted sentences (equal after lower-casing, collapsing spaces
        and dropping trailing punctuation); NaN when there are none.
    """
    texts = _texts(texts, "copy_rate")
    neighbour_reports = _neighbour_reports(neighbour_reports, "copy_rate")
    if len(texts) != len(neighbour_reports):
        raise DataError(f"copy_rate: {len(texts)} texts but {len(neighbour_reports)} neighbour report lists")
    copied = total = 0
    for text, reports in zip(texts, neighbour_reports, strict=True):
        seen = {_sentence_key(s) for report in reports for s in sentences(report)}
        counted = [_sentence_key(s) for s in sentences(text) if not s.lower().startswith("impression")]
        copied, total = copied + sum(s in seen for s in counted), total + len(counted)
    return copied / total if total else math.nan


def retrieval_copy(neighbour_reports: Sequence[Sequence[str]]) -> list[str]:
    """The retrieval baseline: per subject its top neighbour's report (``""`` when it has none)."""
    return [reports[0] if reports else "" for reports in _neighbour_reports(neighbour_reports, "retrieval_copy")]


# --------------------------------------------------------------------------------- helpers
def _class_patterns(label: str) -> list[re.Pattern[str]]:
    name = _normalised(label)
    if name.lower() == "control":
        return [_whole(term, re.IGNORECASE) for term in _CONTROL_TERMS]
    stem = name.split()[0].removesuffix("'s") if name.split() else name
    patterns = [_whole(name, re.IGNORECASE)]
    if len(stem) >= 5:
        patterns.append(re.compile(rf"(?<!\w){re.escape(stem)}(?:'s|s)?(?!\w)", re.IGNORECASE))
    return patterns


def _stated(text: str, patterns: Mapping[str, Sequence[re.Pattern[str]]]) -> str | None:
    """The one value whose patterns match ``text`` un-negated and not inside a longer match."""
    spans = [
        (match.start(), match.end(), value)
        for value, compiled in patterns.items()
        for pattern in compiled
        for match in pattern.finditer(text)
        if not _negated(text, match.start())
    ]
    found = {
        value
        for start, end, value in spans
        if not any(s <= start and end <= e and e - s > end - start for s, e, _ in spans)
    }
    return found.pop() if len(found) == 1 else None


def _negated(text: str, start: int) -> bool:
    clause = _CLAUSE_END.split(text[:start])[-1]
    return _NEGATION.search(clause) is not None


def _states(text: str, category: str, truth: object, classes: Sequence[str], values: Sequence[str]) -> bool:
    if category == "diagnosis":
        return parse_diagnosis(text, classes) == truth
    if category == "severity":
        return parse_severity(text) == truth
    if category == "sex":
        return parse_sex(text) == truth
    if category == "age":
        age = parse_age(text)
        return age is not None and abs(age - float(truth)) <= AGE_TOLERANCE
    if category in ("gene_findings", "brain_findings"):
        return parse_findings_family(text, category.removesuffix("_findings")) == truth
    return parse_categorical(text, values) == str(truth)


def _column(cohort: Any, column: str) -> list[object]:
    """A covariate (else phenotype) column as a list, ``None`` where missing."""
    available = []
    for name in ("covariates", "phenotypes"):
        table = getattr(cohort, name, None)
        if table is not None and column in table.columns:
            series = table[column]
            return [
                None if missing else value
                for value, missing in zip(series.tolist(), series.isna().tolist(), strict=True)
            ]
        available += [] if table is None else list(table.columns)
    raise DataError(f"cohort column {column!r}: not in the covariates or phenotypes; available: {available}")


def _fact_value(column: str, value: object, subject: str) -> object:
    if column == "age":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise DataError(f"column 'age' of subject {subject}: expected a number, got {value!r}") from None
    if column == "sex":
        code = _SEX_CODES.get(str(value).strip().lower())
        if code is None:
            raise DataError(f"column 'sex' of subject {subject}: expected F/M, female/male or woman/man, got {value!r}")
        return code
    return str(value)


def _present(cohort: Any) -> dict[str, Sequence[bool]]:
    features = getattr(cohort, "features", None) or {}
    if not features:
        return {modality: [True] * len(cohort.subject_ids) for modality in _MODALITIES}
    return {modality: list(cohort.present(modality)) for modality in _MODALITIES if modality in features}


def _sentence_key(sentence: str) -> str:
    return " ".join(_normalised(sentence).lower().split()).rstrip(" .!?;:,")


def _texts(texts: Sequence[str], caller: str) -> list[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{caller}: texts[{i}] expected a str (a report's text), got {type(text).__name__}")
    return list(texts)


def _neighbour_reports(neighbour_reports: Sequence[Sequence[str]], caller: str) -> list[list[str]]:
    for i, reports in enumerate(neighbour_reports):
        if isinstance(reports, str) or not all(isinstance(r, str) for r in reports):
            raise DataError(f"{caller}: neighbour_reports[{i}] expected a list of report texts, got {reports!r:.80}")
    return [list(reports) for reports in neighbour_reports]
