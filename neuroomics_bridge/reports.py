"""Clinical summaries from subject embeddings, grounded in what the aligned space says.

A report is written by the backbone from the subject's soft prefix tokens plus a prompt that
states the evidence: which data the subject has, the zero-shot diagnosis probabilities, and the
reports of the most similar reference subjects (retrieval-augmented, through faiss). The findings
are generated first, then the impression on its own, so every report has exactly one; the text
is split into the impression and one profile per modality (genetic, imaging), and a profile
whose data the subject lacks says so. Every report carries the research-use notice and the
evidence it used.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from neuroomics_bridge.data.text import sentences
from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.io import atomic_directory

if TYPE_CHECKING:
    from neuroomics_bridge.bridge import Bridge
    from neuroomics_bridge.data.cohort import Cohort
    from neuroomics_bridge.retrieval import EmbeddingIndex

__all__ = [
    "RESEARCH_NOTICE",
    "Report",
    "Evidence",
    "Neighbour",
    "ReferenceSet",
    "generate_reports",
    "parse_label",
    "report_prompt",
    "section_name",
    "split_sections",
]

RESEARCH_NOTICE = "Research use only — not for clinical decision-making."
IMPRESSION = "Impression"
DATA_NAMES = {"gene": "gene expression", "brain": "brain imaging"}
SECTION_NAMES = {"gene": "Genetic profile", "brain": "Imaging profile"}
SECTION_WORDS = {
    "gene": ("expression", "transcript", "gene", "regulat", "rna", "programme", "variant", "mutation"),
    "brain": (
        "mri",
        "imaging",
        "atroph",
        "volume",
        "grey matter",
        "gray matter",
        "scan",
        "cortic",
        "hippocamp",
        "striat",
    ),
}
CONTROL_WORDS = ("control", "no evidence of neurodegeneration", "healthy")


def section_name(modality: str) -> str:
    """The report heading of a modality (``gene`` -> ``Genetic profile``)."""
    return SECTION_NAMES.get(modality, f"{modality.capitalize()} profile")


@dataclasses.dataclass
class Neighbour:
    """A reference subject close to the reported one in the aligned space."""

    subject_id: str
    similarity: float
    label: str | None
    report: str


@dataclasses.dataclass
class Evidence:
    """What the prompt told the backbone about the subject."""

    present: list[str]
    absent: list[str]
    probabilities: dict[str, float]
    neighbours: list[Neighbour]


@dataclasses.dataclass
class Report:
    """A generated summary: sections (split from ``text``, the raw generation), the evidence
    behind it, provenance (backbone and adapter fingerprints) and the notice."""

    subject_id: str
    sections: dict[str, str]
    evidence: Evidence
    model: str
    adapters: str
    label: str | None
    text: str = ""
    notice: str = RESEARCH_NOTICE

    @property
    def impression(self) -> str:
        return self.sections.get(IMPRESSION, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        lines = [f"# Report for {self.subject_id}", "", f"> **{self.notice}**", ""]
        for heading, text in self.sections.items():
            lines += [f"**{heading}:** {text}", ""]
        lines += ["## Evidence", "", f"- data: {', '.join(self.evidence.present) or 'none'}"]
        if self.evidence.absent:
            lines.append(f"- missing: {', '.join(self.evidence.absent)}")
        probabilities = ", ".join(f"{label} {p:.2f}" for label, p in self.evidence.probabilities.items())
        lines.append(f"- zero-shot probabilities: {probabilities}")
        for n in self.evidence.neighbours:
            lines.append(f"- similar reference subject {n.subject_id} ({n.similarity:.2f}): {n.report}")
        lines += ["", f"_model: {self.model}; adapters: {self.adapters}_", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained HTML fragment (escaped), notice first."""
        e = html.escape
        rows = "".join(f"<p><b>{e(h)}:</b> {e(t)}</p>" for h, t in self.sections.items())
        probabilities = ", ".join(f"{e(label)} {p:.2f}" for label, p in self.evidence.probabilities.items())
        neighbours = "".join(
            f"<li>{e(n.subject_id)} ({n.similarity:.2f}): {e(n.report)}</li>" for n in self.evidence.neighbours
        )
        missing = f"<li>missing: {e(', '.join(self.evidence.absent))}</li>" if self.evidence.absent else ""
        return (
            f'<article class="report"><h3>{e(self.subject_id)}</h3>'
            f'<p class="notice">{e(self.notice)}</p>{rows}'
            f"<details><summary>evidence</summary><ul><li>data: {e(', '.join(self.evidence.present))}</li>"
            f"{missing}<li>zero-shot: {probabilities}</li><li>similar subjects:<ul>{neighbours}</ul></li></ul>"
            f"<p><small>model {e(self.model)}; adapters {e(self.adapters)}</small></p></details></article>"
        )


def parse_label(impression: str, classes: Sequence[str]) -> str | None:
    """The one class an impression names, or ``None`` (none or several: unparseable).

    A class matches by its full name or its first word ("Alzheimer's" for "Alzheimer's
    disease"); ``control`` also matches "healthy" and "no evidence of neurodegeneration".
    """
    text = impression.lower().replace("’", "'")
    found = set()
    for label in classes:
        name = label.lower()
        words = (name, name.split()[0]) if len(name.split()[0]) >= 5 else (name,)
        if name == "control":
            words = CONTROL_WORDS
        if any(re.search(rf"\b{re.escape(w)}", text) for w in words):
            found.add(label)
    return found.pop() if len(found) == 1 else None


@dataclasses.dataclass
class ReferenceSet:
    """Reference subjects a report may cite: reports, labels and a faiss index per modality."""

    subject_ids: list[str]
    reports: list[str]
    labels: list[str | None]
    indexes: dict[str, EmbeddingIndex]

    @classmethod
    def build(cls, bridge: Bridge, cohort: Cohort) -> Self:
        """Index the aligned embeddings of ``cohort``'s subjects (usually the training fold)."""
        from neuroomics_bridge.retrieval import EmbeddingIndex

        if cohort.reports is None:
            raise DataError("ReferenceSet: the reference cohort needs reports")
        indexes = {}
        for modality in bridge.modalities:
            rows = cohort.present(modality)
            if rows.any():
                ids = [s for s, keep in zip(cohort.subject_ids, rows, strict=True) if keep]
                indexes[modality] = EmbeddingIndex.build(bridge.embed(modality, cohort.features[modality][rows]), ids)
        labels = list(cohort.labels) if cohort.labels is not None else [None] * cohort.n_subjects
        return cls(list(cohort.subject_ids), list(cohort.reports), labels, indexes)

    def neighbours(self, embeddings: Mapping[str, np.ndarray], k: int) -> list[Neighbour]:
        """The ``k`` reference subjects most similar over the given modalities' unit vectors."""
        scores: dict[str, list[float]] = {}
        for modality, vector in embeddings.items():
            if modality in self.indexes:
                found = self.indexes[modality].search(vector[None], k=max(k * 3, k))
                for subject, score in zip(found.ids[0], found.scores[0], strict=False):
                    scores.setdefault(subject, []).append(float(score))
        ranked = sorted(scores, key=lambda s: -float(np.mean(scores[s])))[:k]
        row = {s: i for i, s in enumerate(self.subject_ids)}
        return [Neighbour(s, float(np.mean(scores[s])), self.labels[row[s]], self.reports[row[s]]) for s in ranked]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write reports, labels and one faiss index per modality, atomically."""
        target = Path(directory)
        with atomic_directory(target) as tmp:
            table = {"subject_ids": self.subject_ids, "reports": self.reports, "labels": self.labels}
            (tmp / "references.json").write_text(json.dumps(table))
            for modality, index in self.indexes.items():
                index.save(tmp / modality)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        from neuroomics_bridge.retrieval import EmbeddingIndex

        folder = Path(directory)
        if not (folder / "references.json").is_file():
            raise MissingFileError(f"{folder / 'references.json'}: missing; not a saved ReferenceSet")
        table = json.loads((folder / "references.json").read_text())
        indexes = {p.name: EmbeddingIndex.load(p) for p in sorted(folder.iterdir()) if p.is_dir()}
        return cls(table["subject_ids"], table["reports"], table["labels"], indexes)


def generate_reports(
    bridge: Bridge,
    inputs: Mapping[str, np.ndarray],
    *,
    subject_ids: Sequence[str] | None = None,
    reference: ReferenceSet | None = None,
    classes: Sequence[str] = (),
    class_prompt: str = "Impression: {label}.",
    prompt: str | None = None,
    neighbours: int = 3,
    max_new_tokens: int = 80,
    batch_size: int = 8,
    show_progress: bool | None = None,
) -> list[Report]:
    """Write one :class:`Report` per row of ``inputs`` (see :meth:`Bridge.generate_report`)."""
    n = _rows(inputs, bridge.modalities)
    ids = [str(s) for s in subject_ids] if subject_ids is not None else [f"subject-{i}" for i in range(n)]
    evidence = [_evidence(bridge, inputs, i, reference, classes, class_prompt, neighbours) for i in range(n)]
    backbone = bridge.backbone
    task = prompt or bridge.config.report_prompt
    prompts = [report_prompt(task, ev) for ev in evidence]
    prefix = bridge.prefix(inputs).detach()
    options = {"prefix_embeds": prefix, "batch_size": batch_size, "show_progress": show_progress}
    # The findings first, then the impression on its own: every report gets exactly one.
    bodies = backbone.generate(
        prompts, max_new_tokens=max_new_tokens, stop=["Impression:", "\n"], no_repeat_ngram_size=4, **options
    )
    prompts = [f"{p} {body} Impression:" for p, body in zip(prompts, bodies, strict=True)]
    impressions = backbone.generate(prompts, max_new_tokens=24, stop=[".", "\n"], **options)
    written = [f"{body} Impression: {impression}." for body, impression in zip(bodies, impressions, strict=True)]
    texts = {i: split_sections(written[i], bridge.modalities, evidence[i].present) for i in range(n)}
    adapters = bridge.adapter_id
    return [
        Report(
            subject_id=ids[i],
            sections=texts[i],
            evidence=evidence[i],
            model=f"{backbone.name} ({backbone.weights_hash[:12]})",
            adapters=adapters,
            label=parse_label(texts[i][IMPRESSION], classes) if classes else None,
            text=written[i],
        )
        for i in range(n)
    ]


def _rows(inputs: Mapping[str, np.ndarray], modalities: Sequence[str]) -> int:
    unknown = sorted(set(inputs) - set(modalities))
    if unknown:
        raise DataError(f"generate_report: unknown modalities {unknown}; the bridge has {list(modalities)}")
    sizes = {len(x) for x in inputs.values()}
    if len(sizes) != 1:
        raise DataError(f"generate_report: every modality needs the same number of rows, got {sorted(sizes)}")
    return sizes.pop()


def _evidence(
    bridge: Bridge,
    inputs: Mapping[str, np.ndarray],
    row: int,
    reference: ReferenceSet | None,
    classes: Sequence[str],
    class_prompt: str,
    k: int,
) -> Evidence:
    present = [m for m in bridge.modalities if m in inputs and not np.isnan(np.asarray(inputs[m][row], float)).all()]
    absent = [m for m in bridge.modalities if m not in present]
    probabilities: dict[str, float] = {}
    if classes and present:
        prompts = [class_prompt.format(label=c) for c in classes]
        mean = np.mean([bridge.zero_shot(m, np.asarray(inputs[m][row : row + 1]), prompts)[0] for m in present], axis=0)
        probabilities = dict(sorted(zip(classes, mean.round(3).tolist(), strict=True), key=lambda kv: -kv[1]))
    found: list[Neighbour] = []
    if reference is not None and present:
        found = reference.neighbours({m: bridge.embed(m, np.asarray(inputs[m][row : row + 1]))[0] for m in present}, k)
    return Evidence(present=present, absent=absent, probabilities=probabilities, neighbours=found)


def report_prompt(task: str, evidence: Evidence | None = None) -> str:
    """The text the backbone continues with a report (after the subject's soft prefix).

    A completion prompt, not a chat turn: the evidence (data present and missing, zero-shot
    probabilities), then the reports of similar subjects as in-context examples right before
    ``Report of this subject (most likely <top class>):``, so even a small base model answers
    in the examples' style and keeps the leading diagnosis in view. The prefix stage trains with
    the same prompt without evidence (``Report of this subject:``).
    """
    lines = [task]
    final = "Report of this subject:"
    if evidence is not None:
        lines.append("Data available: " + (", ".join(DATA_NAMES.get(m, m) for m in evidence.present) or "none") + ".")
        if evidence.absent:
            lines.append(f"Data missing: {', '.join(DATA_NAMES.get(m, m) for m in evidence.absent)}.")
        if evidence.probabilities:
            top = list(evidence.probabilities.items())[:3]
            lines.append("Diagnosis probabilities: " + ", ".join(f"{label} {p:.2f}" for label, p in top) + ".")
            final = f"Report of this subject (most likely {top[0][0]}):"
        lines += [f"Report of a similar subject: {n.report}" for n in evidence.neighbours]
    lines.append(final)
    return "\n".join(lines)


def split_sections(text: str, modalities: Sequence[str], present: Sequence[str]) -> dict[str, str]:
    """Sections of a free-text report: the impression, then one profile per modality.

    The impression is what follows the last ``Impression:`` (else the last sentence); a
    modality's profile gathers the other sentences that mention its vocabulary (expression and
    genes; imaging and anatomy). A modality the subject lacks says so.
    """
    parts = sentences(text)
    marker = text.lower().rfind("impression:")
    impression = text[marker + len("impression:") :].strip() if marker >= 0 else (parts[-1] if parts else "")
    body = [p for p in parts if "impression:" not in p.lower() and p != impression]
    sections = {IMPRESSION: impression or "Not stated."}
    for modality in modalities:
        heading = section_name(modality)
        if modality not in present:
            sections[heading] = f"No {DATA_NAMES.get(modality, modality)} data for this subject."
            continue
        words = SECTION_WORDS.get(modality, (modality,))
        found = [p for p in body if any(w in p.lower() for w in words)]
        sections[heading] = " ".join(found) or "Not described in the generated text."
    return sections
