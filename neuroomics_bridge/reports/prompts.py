"""The prompts the backbone continues with a report, after the subject's soft prefix.

One builder serves training and generation: the prefix stage trains on exactly the layouts
reports are generated with (a model trained on one layout and asked with another writes
nonsense; see DESIGN.md). A :class:`PromptLayout` says what the prompt states besides the
instruction; :data:`LAYOUTS` names the ones the library trains and evaluates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from neuroomics_bridge.errors import ConfigError
from neuroomics_bridge.reports.report import DATA_NAMES, Evidence, covariate_text

__all__ = [
    "CLASS_PROMPT",
    "DEFAULT_LAYOUT",
    "LAYOUTS",
    "ClassPrompt",
    "ClassTexts",
    "Wordings",
    "class_mapping",
    "class_texts",
    "class_wordings",
    "prompt_ensemble",
    "PromptLayout",
    "get_layout",
    "report_prompt",
]

Wordings = str | Sequence[str]
"""What names one class: a text, or several wordings of it (a prompt ensemble)."""
ClassPrompt = str | Mapping[str, Wordings]
"""The text(s) of each class: a template formatted with the label, or a mapping label -> text(s)."""
ClassTexts = Sequence[Wordings] | Mapping[str, Wordings]
"""Zero-shot classes: per class one text or several wordings, in order or by class name."""
CLASS_PROMPT = "Impression: {label}."
"""The default class text for zero-shot classification: a report's impression line."""


def class_texts(class_prompt: ClassPrompt, classes: Sequence[str]) -> list[Wordings]:
    """The text(s) of each class: ``class_prompt`` formatted with it, or looked up in the mapping."""
    if isinstance(class_prompt, str):
        return [class_prompt.format(label=c) for c in classes]
    return [class_prompt[c] for c in classes]


def class_mapping(class_prompt: ClassPrompt, labels: Sequence[str] | None) -> dict[str, Wordings]:
    """The zero-shot classes of a cohort: a mapping prompt's own classes, else the cohort's
    sorted distinct labels, each with its text(s) from ``class_prompt``."""
    names = sorted(set(labels or [])) if isinstance(class_prompt, str) else list(class_prompt)
    return dict(zip(names, class_texts(class_prompt, names), strict=True))


def class_wordings(classes: ClassTexts) -> tuple[list[str], list[list[str]]]:
    """Class names and each class's wordings (a list, also for a single text).

    A mapping's keys name the classes; a sequence's classes are named by their first wording.
    """
    entries = list(classes.values()) if isinstance(classes, Mapping) else list(classes)
    wordings = [[entry] if isinstance(entry, str) else list(entry) for entry in entries]
    if any(not texts for texts in wordings):
        raise ConfigError("class texts: every class needs at least one wording")
    names = list(classes) if isinstance(classes, Mapping) else [texts[0] for texts in wordings]
    return names, wordings


def prompt_ensemble(templates: Sequence[str], descriptions: Mapping[str, Wordings]) -> dict[str, list[str]]:
    """Every template (with a ``{}`` slot) filled with every description of each class, as CLIP
    builds its ImageNet prompts: ``{class: [template.format(description), ...]}``."""
    _, wordings = class_wordings(descriptions)
    return {
        name: [template.format(text) for template in templates for text in texts]
        for name, texts in zip(descriptions, wordings, strict=True)
    }


@dataclasses.dataclass(frozen=True)
class PromptLayout:
    """What a report's prompt gives the backbone besides the instruction: the ablation switches.

    Parameters
    ----------
    prefix
        The subject's soft prefix tokens; ``False`` gives the projector's learned "absent" tokens
        instead, so the model sees no subject data at all.
    covariates
        The subject's known covariates (``BridgeConfig.report_covariates``) as stated facts.
    probabilities
        The zero-shot diagnosis probabilities of the subject's vectors (top three).
    neighbours
        How many retrieved similar subjects' reports to quote.
    hint
        End with ``Report of this subject (most likely <top class>):``.
    """

    prefix: bool = True
    covariates: bool = True
    probabilities: bool = False
    neighbours: int = 0
    hint: bool = False


LAYOUTS: dict[str, PromptLayout] = {
    # The subject's own vectors as soft tokens, its known covariates, and the zero-shot
    # probabilities of those vectors (evidence the reader sees too).
    "full": PromptLayout(probabilities=True),
    # The grounding test and the default: only soft tokens (and the covariates, which are data).
    "prefix_only": PromptLayout(),
    # The prompt-only baseline: the same evidence, no subject prefix.
    "evidence_only": PromptLayout(prefix=False, probabilities=True),
    # The retrieval-augmented design of 0.1 (neighbours' reports and the top class in the prompt),
    # kept to measure how much of a report it copies.
    "retrieval": PromptLayout(probabilities=True, neighbours=3, hint=True),
}
DEFAULT_LAYOUT = "full"
"""The layout reports are written with unless asked otherwise, chosen by the grounding benchmark
(``benchmarks/bench_grounding.py``): with the prefix stage trained for its six epochs, ``"full"``
led ``"prefix_only"`` on the mean of every fact category over three seeds (README). It states the
zero-shot probabilities only when classes are given; without them it is the prefix-only prompt."""


def get_layout(layout: str | PromptLayout) -> PromptLayout:
    """A layout by name from :data:`LAYOUTS` (or itself); :class:`DataError` for an unknown name."""
    from neuroomics_bridge.errors import DataError

    if isinstance(layout, PromptLayout):
        return layout
    if layout not in LAYOUTS:
        raise DataError(f"prompt layout: expected one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout]


def report_prompt(task: str, evidence: Evidence | None = None, layout: str | PromptLayout = DEFAULT_LAYOUT) -> str:
    """The text the backbone continues with a report (after the subject's soft prefix).

    Parameters
    ----------
    task
        The instruction line (``BridgeConfig.report_prompt``).
    evidence
        What is known about the subject; ``None`` gives the bare prompt (instruction, then
        ``Report of this subject:``).
    layout
        Which of the evidence the prompt states (a :class:`PromptLayout` or a name in
        :data:`LAYOUTS`): missing data always, then known covariates, zero-shot probabilities and
        quoted neighbour reports as the layout says.

    Returns
    -------
    str
        A completion prompt (not a chat turn), ending in ``Report of this subject:``.
    """
    chosen = get_layout(layout)
    lines = [task]
    final = "Report of this subject:"
    if evidence is not None:
        if evidence.absent:  # what the subject lacks (its "absent" tokens say so too)
            lines.append(f"Data missing: {', '.join(DATA_NAMES.get(m, m) for m in evidence.absent)}.")
        if chosen.covariates and evidence.covariates:
            lines.append(f"Known: {covariate_text(evidence.covariates)}.")
        if chosen.probabilities and evidence.probabilities:
            top = list(evidence.probabilities.items())[:3]
            lines.append("Diagnosis probabilities: " + ", ".join(f"{label} {p:.2f}" for label, p in top) + ".")
            if chosen.hint:
                final = f"Report of this subject (most likely {top[0][0]}):"
        lines += [f"Report of a similar subject: {n.report}" for n in evidence.neighbours[: chosen.neighbours]]
    lines.append(final)
    return "\n".join(lines)
