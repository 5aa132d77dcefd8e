"""Grounded generation: the bridge writes a clinical summary from a subject's vectors.

A report is written by the backbone from the subject's soft prefix tokens plus a prompt that
states the evidence: which data the subject has, the zero-shot diagnosis probabilities, and the
reports of the most similar reference subjects (retrieval-augmented, through faiss). The findings
are generated first, then the impression on its own, so every report has exactly one; the text
is split into the impression and one profile per modality (genetic, imaging), and a profile
whose data the subject lacks says so. Every report carries the research-use notice and the
evidence it used.

:class:`Bridge` gets :meth:`generate_report` from :class:`ReportGenerationMixin` (as
transformers' models get ``generate`` from ``GenerationMixin``), so this module needs no import
of the model class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from neuroomics_bridge.errors import DataError
from neuroomics_bridge.reports.prompts import CLASS_PROMPT, report_prompt
from neuroomics_bridge.reports.report import IMPRESSION, Evidence, Neighbour, Report
from neuroomics_bridge.reports.sections import parse_label, split_sections
from neuroomics_bridge.retrieval import ReferenceSet

__all__ = ["ReportGenerationMixin"]


class ReportGenerationMixin:
    """``generate_report`` for :class:`Bridge` (it needs ``adapters``, ``backbone``, ``prefix``,
    ``zero_shot``, ``embed``, ``modalities``, ``config`` and ``adapter_id``)."""

    def generate_report(
        self,
        inputs: Mapping[str, np.ndarray],
        prompt: str | None = None,
        *,
        subject_ids: Sequence[str] | None = None,
        reference: ReferenceSet | None = None,
        classes: Sequence[str] = (),
        class_prompt: str = CLASS_PROMPT,
        neighbours: int = 3,
        max_new_tokens: int = 80,
        batch_size: int = 8,
        show_progress: bool | None = None,
    ) -> list[Report]:
        """Clinical summaries for a batch of subjects (any subset of modalities per subject).

        ``inputs`` maps modalities to ``(n, d)`` vectors (absent subjects: NaN rows; a modality
        left out: absent for all). The backbone reads each subject's soft prefix tokens and a
        prompt (``prompt`` or ``config.report_prompt``) stating the evidence: available data,
        zero-shot probabilities over ``classes`` (one ``class_prompt`` each) and the reports of
        the ``neighbours`` most similar subjects of ``reference`` (see :func:`report_prompt`).
        The findings are generated greedily, in batches (``max_new_tokens``, no repeated
        4-grams), then the impression on its own; the text is split into the impression and one
        profile per modality (a modality without data says so). ``Report.label`` is the class
        the impression names.
        """
        self.adapters.eval()
        with torch.no_grad():
            return _generate_reports(
                self,
                inputs,
                subject_ids=subject_ids,
                reference=reference,
                classes=classes,
                class_prompt=class_prompt,
                prompt=prompt,
                neighbours=neighbours,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                show_progress=show_progress,
            )


def _generate_reports(
    bridge: Any,
    inputs: Mapping[str, np.ndarray],
    *,
    subject_ids: Sequence[str] | None = None,
    reference: ReferenceSet | None = None,
    classes: Sequence[str] = (),
    class_prompt: str = CLASS_PROMPT,
    prompt: str | None = None,
    neighbours: int = 3,
    max_new_tokens: int = 80,
    batch_size: int = 8,
    show_progress: bool | None = None,
) -> list[Report]:
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
    bridge: Any,
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
