"""Report: a generated clinical summary, the evidence behind it, and its renderings.

Every report carries the research-use notice, its provenance (backbone and adapter
fingerprints) and the evidence its prompt stated; Markdown and HTML renderings put the notice
first and escape the text.
"""

from __future__ import annotations

import dataclasses
import html
import json
from collections.abc import Mapping
from typing import Any

from neuroomics_bridge.notice import RESEARCH_NOTICE

__all__ = [
    "DATA_NAMES",
    "IMPRESSION",
    "REPORT_BATCH_SIZE",
    "REPORT_MAX_NEW_TOKENS",
    "Evidence",
    "Neighbour",
    "Report",
    "covariate_text",
    "section_name",
]

REPORT_BATCH_SIZE = 64
"""Subjects whose reports are decoded together. Batch-1 decoding reads every weight per token,
so more rows per step cost little: 64 prompts of 60 new tokens took 4.8 s at 64 a batch against
7.1 s at 32 and 11.0 s at 16 (default backbone, Intel Xeon, 2 cores), the demo's 360 reports
45 s against 64 s at 32. The key/value cache grows with it (a 7B LLaMA's is ~0.5 MB a token, so
64 rows of 200 tokens hold ~6.7 GB); :meth:`TextBackbone.generate` splits a batch whose cache
would take more than half the memory available, so this is an upper bound."""
REPORT_MAX_NEW_TOKENS = 80
"""Longest generated findings text per report, in tokens (generation stops earlier at EOS)."""

IMPRESSION = "Impression"
DATA_NAMES = {"gene": "gene expression", "brain": "brain imaging"}
SECTION_NAMES = {"gene": "Genetic profile", "brain": "Imaging profile"}
SEX_WORDS = {"f": "female", "female": "female", "woman": "female", "m": "male", "male": "male", "man": "male"}


def section_name(modality: str) -> str:
    """The report heading of a modality (``gene`` -> ``Genetic profile``)."""
    return SECTION_NAMES.get(modality, f"{modality.capitalize()} profile")


def covariate_text(covariates: Mapping[str, object]) -> str:
    """Known covariates as one clause, e.g. ``age 72, sex male`` (sex codes spelt out)."""
    parts = []
    for name, value in covariates.items():
        text = str(value)
        if name == "age":
            try:
                text = f"{float(value):g}"
            except ValueError:  # an age band ("70-75"), as the cohort gives it
                text = text.strip()
        elif name == "sex":
            text = SEX_WORDS.get(text.strip().lower(), text)
        parts.append(f"{name} {text}")
    return ", ".join(parts)


@dataclasses.dataclass
class Neighbour:
    """A reference subject close to the reported one in the aligned space."""

    subject_id: str
    similarity: float
    label: str | None
    report: str


@dataclasses.dataclass
class Evidence:
    """What is known about the subject: data present and missing, zero-shot probabilities of its
    vectors, retrieved similar subjects and known covariates (a prompt layout states a subset)."""

    present: list[str]
    absent: list[str]
    probabilities: dict[str, float]
    neighbours: list[Neighbour]
    covariates: dict[str, str] = dataclasses.field(default_factory=dict)


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
    layout: str = ""  # the prompt layout it was generated with ("" for a report not written by a bridge)
    notice: str = RESEARCH_NOTICE

    @property
    def impression(self) -> str:
        """The impression section (the class it names is ``label``)."""
        return self.sections.get(IMPRESSION, "")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (nested dataclasses as dicts), as ``reports.jsonl`` stores it: the
        notice first, as in every rendering, so that it is the first thing a reader of the file meets."""
        fields = dataclasses.asdict(self)
        return {"notice": fields.pop("notice"), **fields}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """A Markdown rendering, notice first, then the sections and the evidence.

        Generated and user-given text (sections, ids, labels, reference reports) is escaped as
        HTML, which Markdown renderers pass through, and kept on its line.
        """
        lines = [f"# Report for {_inline(self.subject_id)}", "", f"> **{self.notice}**", ""]
        for heading, text in self.sections.items():
            lines += [f"**{_inline(heading)}:** {_inline(text)}", ""]
        lines += ["## Evidence", "", f"- data: {_inline(', '.join(self.evidence.present)) or 'none'}"]
        if self.evidence.absent:
            lines.append(f"- missing: {_inline(', '.join(self.evidence.absent))}")
        if self.evidence.covariates:
            lines.append(f"- known: {_inline(covariate_text(self.evidence.covariates))}")
        probabilities = ", ".join(f"{_inline(label)} {p:.2f}" for label, p in self.evidence.probabilities.items())
        lines.append(f"- zero-shot probabilities: {probabilities}")
        for n in self.evidence.neighbours:
            similar = f"similar reference subject {_inline(n.subject_id)} ({n.similarity:.2f})"
            lines.append(f"- {similar}: {_inline(n.report)}")
        provenance = f"model: {_inline(self.model)}; adapters: {_inline(self.adapters)}; prompt layout: {self.layout}"
        lines += ["", f"_{provenance}_", ""]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        """Jupyter's Markdown display: :meth:`to_markdown`."""
        return self.to_markdown()

    def _repr_html_(self) -> str:
        """Jupyter's rich display: :meth:`to_html`."""
        return self.to_html()

    def to_html(self) -> str:
        """A self-contained HTML fragment (escaped), notice first."""
        e = html.escape
        rows = "".join(f"<p><b>{e(h)}:</b> {e(t)}</p>" for h, t in self.sections.items())
        probabilities = ", ".join(f"{e(label)} {p:.2f}" for label, p in self.evidence.probabilities.items())
        neighbours = "".join(
            f"<li>{e(n.subject_id)} ({n.similarity:.2f}): {e(n.report)}</li>" for n in self.evidence.neighbours
        )
        missing = f"<li>missing: {e(', '.join(self.evidence.absent))}</li>" if self.evidence.absent else ""
        if self.evidence.covariates:
            missing += f"<li>known: {e(covariate_text(self.evidence.covariates))}</li>"
        return (
            f'<article class="report"><h3>{e(self.subject_id)}</h3>'
            f'<p class="notice">{e(self.notice)}</p>{rows}'
            f"<details><summary>evidence</summary><ul><li>data: {e(', '.join(self.evidence.present))}</li>"
            f"{missing}<li>zero-shot: {probabilities}</li><li>similar subjects:<ul>{neighbours}</ul></li></ul>"
            f"<p><small>model {e(self.model)}; adapters {e(self.adapters)}; prompt layout {e(self.layout)}</small></p>"
            "</details></article>"
        )


def _inline(text: object) -> str:
    """``text`` for one Markdown line: HTML special characters escaped (a renderer passes raw
    HTML through, so a report saying ``<script>`` must not become one) and line breaks folded."""
    return html.escape(" ".join(str(text).split()), quote=False)
