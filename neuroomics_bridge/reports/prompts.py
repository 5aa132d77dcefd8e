"""The prompts the backbone continues with a report, after the subject's soft prefix."""

from __future__ import annotations

from collections.abc import Mapping

from neuroomics_bridge.reports.report import DATA_NAMES, Evidence

__all__ = ["CLASS_PROMPT", "ClassPrompt", "report_prompt"]

ClassPrompt = str | Mapping[str, str]
"""One text per class: a template formatted with the label, or a mapping label -> text."""
CLASS_PROMPT = "Impression: {label}."
"""The default class text for zero-shot classification: a report's impression line."""


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
