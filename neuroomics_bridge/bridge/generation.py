"""Grounded generation: the bridge writes a clinical summary from a subject's own vectors.

The backbone reads the subject's soft prefix tokens, then a prompt laid out by a
:class:`~neuroomics_bridge.reports.prompts.PromptLayout`: the data the subject has, its known
covariates (age and sex are data, stated, never guessed), the zero-shot probabilities of its
vectors, and (only in the ``"retrieval"`` layout) reports of similar reference subjects. The
prefix stage trains on the same layouts, so what the model is asked is what it learned to
answer. The findings are generated first, then the impression on its own, so every report has
exactly one; the text is split into the impression and one profile per modality (a profile whose
data the subject lacks says so). Every report carries the research-use notice, its layout and the
evidence it was given.

:class:`Bridge` gets :meth:`generate_report` and :meth:`evidence` from
:class:`ReportGenerationMixin` (as transformers' models get ``generate`` from
``GenerationMixin``), so this module needs no import of the model class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from neuroomics_bridge.bridge.scverse import is_anndata, modality_inputs
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.notice import RESEARCH_NOTICE
from neuroomics_bridge.reports.prompts import (
    CLASS_PROMPT,
    DEFAULT_LAYOUT,
    ClassPrompt,
    PromptLayout,
    class_texts,
    get_layout,
    report_prompt,
)
from neuroomics_bridge.reports.report import (
    IMPRESSION,
    REPORT_BATCH_SIZE,
    REPORT_MAX_NEW_TOKENS,
    Evidence,
    Neighbour,
    Report,
)
from neuroomics_bridge.reports.sections import parse_label, split_sections
from neuroomics_bridge.retrieval import ReferenceSet

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["ABSTAIN", "ReportGenerationMixin", "Covariates"]

ABSTAIN = "the data do not point to one diagnosis"
"""The impression of a report whose top zero-shot probability is below ``abstain_below``."""

Covariates = pd.DataFrame | Mapping[str, Sequence[Any]]
"""Per-subject covariates, row-aligned with the inputs: a table or column name -> values."""


class ReportGenerationMixin:
    """``evidence`` and ``generate_report`` for :class:`Bridge` (they use its ``adapters``,
    ``backbone``, ``prefix``, ``zero_shot``, ``embed``, ``modalities``, ``config`` and ``adapter_id``)."""

    def evidence(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        covariates: Covariates | None = None,
        reference: ReferenceSet | None = None,
        classes: Sequence[str] = (),
        class_prompt: ClassPrompt = CLASS_PROMPT,
        neighbours: int = 3,
        subject_ids: Sequence[str] | None = None,
    ) -> list[Evidence]:
        """What is known about each subject of a batch, as its report's prompt may state it.

        Parameters
        ----------
        inputs
            Modality -> ``(n, d)`` vectors (absent subjects: NaN rows; a modality left out:
            absent for all).
        covariates
            Row-aligned covariates; the columns in ``config.report_covariates`` are kept.
        reference
            Reference subjects to retrieve ``neighbours`` similar ones from (in the aligned space).
        classes, class_prompt
            Classes for the zero-shot probabilities (mean over the subject's modalities), one
            text each: ``class_prompt`` formatted with the class, or a mapping class -> text.
        neighbours
            How many similar reference subjects each row gets.
        subject_ids
            The rows' subject ids: a subject that is in ``reference`` too is never its own
            neighbour (its own report would be quoted as a similar subject's).

        Returns
        -------
        list[Evidence]
            One per row.
        """
        n = _rows(inputs, self.modalities)
        if subject_ids is not None and len(subject_ids) != n:
            raise DataError(f"subject_ids: expected {n} ids, one per row of the inputs, got {len(subject_ids)}")
        present = {m: _present(inputs, m, n) for m in self.modalities}
        probabilities = _probabilities(self, inputs, present, classes, class_prompt, n)
        known = _covariate_rows(covariates, self.config.report_covariates, n)
        found: list[list[Neighbour]] = [[] for _ in range(n)]
        if reference is not None and neighbours > 0:
            embedded = {m: self.embed(m, np.asarray(inputs[m])) for m in self.modalities if present[m].any()}
            for row in range(n):
                query = {m: e[row] for m, e in embedded.items() if present[m][row]}
                own = () if subject_ids is None else (str(subject_ids[row]),)
                found[row] = reference.neighbours(query, neighbours, exclude=own) if query else []
        return [
            Evidence(
                present=[m for m in self.modalities if present[m][row]],
                absent=[m for m in self.modalities if not present[m][row]],
                probabilities=probabilities[row],
                neighbours=found[row],
                covariates=known[row],
            )
            for row in range(n)
        ]

    def generate_report(
        self,
        inputs: Mapping[str, np.ndarray] | ad.AnnData,
        prompt: str | None = None,
        *,
        subject_ids: Sequence[str] | None = None,
        covariates: Covariates | None = None,
        use_rep: str | Mapping[str, str] | None = None,
        key_added: str | None = None,
        reference: ReferenceSet | None = None,
        classes: Sequence[str] = (),
        class_prompt: ClassPrompt = CLASS_PROMPT,
        neighbours: int = 3,
        layout: str | PromptLayout = DEFAULT_LAYOUT,
        abstain_below: float | None = None,
        max_new_tokens: int = REPORT_MAX_NEW_TOKENS,
        batch_size: int = REPORT_BATCH_SIZE,
        show_progress: bool | None = None,
    ) -> list[Report]:
        """Clinical summaries for a batch of subjects (any subset of modalities per subject).

        Parameters
        ----------
        inputs
            Modality -> ``(n, d)`` vectors (absent subjects: NaN rows), or an AnnData whose rows
            are the subjects, each modality in ``obsm`` (see ``use_rep``).
        prompt
            The instruction line (default ``config.report_prompt``, what the prefix stage used).
        subject_ids
            Names for the reports (default: an AnnData's ``obs_names``, else ``subject-<i>``); a
            subject that is also in ``reference`` is never its own neighbour.
        use_rep, key_added
            AnnData only: modality -> obsm key (default ``obsm[m]`` or ``obsm["X_" + m]``; a
            one-modality bridge falls back to ``X``); with ``key_added``, ``obs[key]`` gets the
            class each impression names (categorical), ``obs[key + "_text"]`` the report text,
            ``obs[key + "_notice"]`` the research-use notice beside it, and
            ``uns[key]`` the layout, classes, provenance and the research-use notice, written into
            the given AnnData. Its ``obs`` are the default ``covariates``.
        covariates, reference, classes, class_prompt, neighbours
            The evidence gathered by :meth:`evidence`; the neighbours are listed in every report
            for the reader and quoted in the prompt only where ``layout`` says so.
        layout
            What the prompt states (:data:`~neuroomics_bridge.reports.prompts.LAYOUTS`: ``"full"``,
            ``"prefix_only"``, ``"evidence_only"``, ``"retrieval"``), the ablation switches. The
            default, ``"full"`` (the subject's prefix, its covariates and, given ``classes``, its
            zero-shot probabilities), scored highest on held-out subjects (README); the evidence is
            gathered either way and recorded in every report for the reader.
        abstain_below
            When the subject's top zero-shot probability is below this, the impression says the
            data do not point to one class (naming the most probable one and its probability)
            instead of naming a diagnosis, and ``Report.label`` is ``None``. Needs ``classes``;
            meaningful once the temperature is fitted (:meth:`Bridge.fit_temperature`).
        max_new_tokens, batch_size, show_progress
            Greedy decoding of the findings (no repeated 4-grams), ``batch_size`` subjects at a
            time; then the impression on its own.

        Returns
        -------
        list[Report]
            One per row; ``Report.label`` is the class the impression names.
        """
        if is_anndata(inputs):
            adata = inputs
            reports = self.generate_report(
                modality_inputs(adata, self.modalities, use_rep),
                prompt,
                subject_ids=list(adata.obs_names) if subject_ids is None else subject_ids,
                covariates=adata.obs.reset_index(drop=True) if covariates is None else covariates,
                reference=reference,
                classes=classes,
                class_prompt=class_prompt,
                neighbours=neighbours,
                layout=layout,
                abstain_below=abstain_below,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                show_progress=show_progress,
            )
            if key_added:
                adata.obs[key_added] = pd.Categorical([r.label for r in reports], categories=list(classes) or None)
                adata.obs[f"{key_added}_text"] = [r.text for r in reports]
                adata.obs[f"{key_added}_notice"] = RESEARCH_NOTICE  # travels with the text when obs is exported
                adata.uns[key_added] = {
                    "layout": reports[0].layout if reports else "",
                    "classes": list(classes),
                    "model": reports[0].model if reports else "",
                    "adapters": self.adapter_id,
                    "notice": RESEARCH_NOTICE,
                }
            return reports
        return self.generate_report_variants(
            {"": (inputs, layout)},
            prompt,
            subject_ids=subject_ids,
            covariates=covariates,
            reference=reference,
            classes=classes,
            class_prompt=class_prompt,
            neighbours=neighbours,
            abstain_below=abstain_below,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            show_progress=show_progress,
        )[""]

    def generate_report_variants(
        self,
        variants: Mapping[str, tuple[Mapping[str, np.ndarray], str | PromptLayout]],
        prompt: str | None = None,
        *,
        subject_ids: Sequence[str] | None = None,
        covariates: Covariates | None = None,
        reference: ReferenceSet | None = None,
        classes: Sequence[str] = (),
        class_prompt: ClassPrompt = CLASS_PROMPT,
        neighbours: int = 3,
        abstain_below: float | None = None,
        max_new_tokens: int = REPORT_MAX_NEW_TOKENS,
        batch_size: int = REPORT_BATCH_SIZE,
        show_progress: bool | None = None,
    ) -> dict[str, list[Report]]:
        """Reports of the same subjects written several ways (layouts, shuffled controls), decoded together.

        An evaluation writes each subject's report in several prompt layouts, and each also from
        another subject's vectors. On a CPU, a decoding batch's cost per row falls as it grows to
        a few dozen rows, so the variants of a small cohort share batches here instead of each
        decoding its own few rows. A variant's reports are those
        :meth:`generate_report` writes for its inputs and layout, up to float rounding (a row's
        padding depends on the batch it is decoded in). Every variant's soft prefix is held at
        once (rows x prefix tokens x hidden size floats): for a large cohort on a large
        backbone, call it on chunks of subjects.

        Parameters
        ----------
        variants
            Name -> ``(inputs, layout)``: modality -> ``(n, d)`` arrays (absent subjects: NaN
            rows; not an AnnData) and the prompt layout. Row ``i`` of every variant is written for subject ``i``
            (its id and covariates), whichever subject's vectors it holds.
        prompt, subject_ids, covariates, reference, classes, class_prompt, neighbours, abstain_below
            As for :meth:`generate_report`, shared by every variant.
        max_new_tokens, batch_size, show_progress
            Greedy decoding of the findings, ``batch_size`` rows of all the variants at a time.

        Returns
        -------
        dict[str, list[Report]]
            Variant name -> one report per row.
        """
        if abstain_below is not None and not classes:
            raise DataError("abstain_below needs classes (the probabilities it compares)")
        if not variants:
            return {}
        counts = {}
        for name, (inputs, _) in variants.items():
            if is_anndata(inputs):
                raise DataError(
                    f"generate_report_variants: variant {name!r} is an AnnData; expected modality -> (n, d) "
                    "arrays (generate_report reads an AnnData)"
                )
            counts[name] = _rows(inputs, self.modalities)
        if len(set(counts.values())) > 1:
            raise DataError(f"generate_report_variants: every variant needs one row per subject, got rows {counts}")
        (n,) = set(counts.values())
        self.adapters.eval()
        evidence: dict[str, list[Evidence]] = {}
        prompts: list[str] = []
        prefixes: list[torch.Tensor] = []
        with torch.no_grad():
            for name, (inputs, layout) in variants.items():
                chosen = get_layout(layout)
                evidence[name] = self.evidence(
                    inputs,
                    covariates=covariates,
                    reference=reference,
                    classes=classes,
                    class_prompt=class_prompt,
                    neighbours=max(neighbours, chosen.neighbours),
                    subject_ids=subject_ids,
                )
                absent = {m: np.full((n, d), np.nan, dtype=np.float32) for m, d in self.modality_dims.items()}
                # no prefix: the learned "absent" tokens
                prefixes.append(self.prefix(inputs if chosen.prefix else absent))
                prompts += [report_prompt(prompt or self.config.report_prompt, ev, chosen) for ev in evidence[name]]
            texts = _write(self.backbone, prompts, torch.cat(prefixes), max_new_tokens, batch_size, show_progress)
        ids = [str(s) for s in subject_ids] if subject_ids is not None else [f"subject-{i}" for i in range(n)]
        model = f"{self.backbone.name} ({self.backbone.weights_hash[:12]})"
        adapters = self.adapter_id
        reports: dict[str, list[Report]] = {}
        for position, (name, (_, layout)) in enumerate(variants.items()):
            reports[name] = []
            written = texts[position * n : (position + 1) * n]
            for subject_id, text, ev in zip(ids, written, evidence[name], strict=True):
                abstains = abstain_below is not None and bool(ev.probabilities)
                abstains = abstains and max(ev.probabilities.values()) < abstain_below
                if abstains:
                    text = _abstaining(text, ev.probabilities)
                sections = split_sections(text, self.modalities, ev.present)
                ev.neighbours = ev.neighbours[:neighbours]
                reports[name].append(
                    Report(
                        subject_id=subject_id,
                        sections=sections,
                        evidence=ev,
                        model=model,
                        adapters=adapters,
                        label=parse_label(sections[IMPRESSION], classes) if classes and not abstains else None,
                        text=text,
                        layout=layout if isinstance(layout, str) else "custom",
                    )
                )
        return reports


def _write(
    backbone: Any,
    prompts: list[str],
    prefix: torch.Tensor,
    max_new_tokens: int,
    batch_size: int,
    show_progress: bool | None,
) -> list[str]:
    """Greedy reports (no repeated 4-grams) that end in exactly one impression.

    A report is one line; one ending without an impression (the model ran out of tokens or never
    wrote one) gets it in a second, short pass that continues it after ``Impression:``.
    """
    options = {"batch_size": batch_size, "show_progress": show_progress}
    texts = backbone.generate(
        prompts, prefix_embeds=prefix, max_new_tokens=max_new_tokens, stop=["\n"], no_repeat_ngram_size=4, **options
    )
    parts = [[part.strip() for part in text.split("Impression:")] for text in texts]
    bodies = [p[0] for p in parts]
    impressions = [p[1].rstrip(".") if len(p) > 1 else "" for p in parts]  # the first impression written
    missing = [i for i, impression in enumerate(impressions) if not impression]
    if missing:
        follow = [f"{prompts[i]} {bodies[i]} Impression:" for i in missing]
        written = backbone.generate(
            follow, prefix_embeds=prefix[missing], max_new_tokens=24, stop=[".", "\n"], **options
        )
        for i, impression in zip(missing, written, strict=True):
            impressions[i] = impression.strip().rstrip(".")
    return [f"{body} Impression: {impression}." for body, impression in zip(bodies, impressions, strict=True)]


def _abstaining(text: str, probabilities: Mapping[str, float]) -> str:
    """``text`` with its impression replaced by one that names no class (too uncertain)."""
    top, probability = max(probabilities.items(), key=lambda kv: kv[1])
    body = text.split("Impression:")[0].strip()
    return f"{body} Impression: {ABSTAIN} (most probable: {top}, {probability:.2f})."


def _rows(inputs: Mapping[str, np.ndarray], modalities: Sequence[str]) -> int:
    unknown = sorted(set(inputs) - set(modalities))
    if unknown:
        raise DataError(f"generate_report: unknown modalities {unknown}; the bridge has {list(modalities)}")
    for modality, x in inputs.items():
        shape = np.shape(x)
        if len(shape) != 2:
            raise DataError(f"generate_report: {modality}: expected shape (n, d), one row per subject, got {shape}")
    sizes = {len(x) for x in inputs.values()}
    if len(sizes) != 1:
        raise DataError(f"generate_report: every modality needs the same number of rows, got {sorted(sizes)}")
    return sizes.pop()


def _present(inputs: Mapping[str, np.ndarray], modality: str, n: int) -> np.ndarray:
    if modality not in inputs:
        return np.zeros(n, dtype=bool)
    return ~np.isnan(np.asarray(inputs[modality], dtype=float)).all(axis=1)


def _probabilities(
    bridge: Any,
    inputs: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    classes: Sequence[str],
    class_prompt: ClassPrompt,
    n: int,
) -> list[dict[str, float]]:
    """Zero-shot probabilities per row, averaged over the modalities the row has, sorted."""
    if not classes:
        return [{} for _ in range(n)]
    texts = class_texts(class_prompt, classes)
    total, count = np.zeros((n, len(classes))), np.zeros((n, 1))
    for modality, rows in present.items():
        if rows.any():
            total[rows] += bridge.zero_shot(modality, np.asarray(inputs[modality])[rows], texts)
            count[rows] += 1
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return [
        dict(sorted(zip(classes, mean[row].round(3).tolist(), strict=True), key=lambda kv: -kv[1]))
        if count[row, 0]
        else {}
        for row in range(n)
    ]


def _covariate_rows(covariates: Covariates | None, columns: Sequence[str], n: int) -> list[dict[str, str]]:
    """The ``columns`` of each row that has a value, as text."""
    if covariates is None:
        return [{} for _ in range(n)]
    if isinstance(covariates, pd.DataFrame):
        table = covariates
    else:
        lengths = {
            column: np.shape(values)[0] if np.ndim(values) == 1 else None for column, values in covariates.items()
        }
        if set(lengths.values()) - {n}:
            raise DataError(f"generate_report covariates: expected {n} values per column, got {lengths}")
        table = pd.DataFrame(dict(covariates))
    if len(table) != n:
        raise DataError(f"generate_report covariates: expected {n} rows (one per subject), got {len(table)}")
    kept = [c for c in columns if c in table.columns]
    return [{c: str(table[c].iloc[row]) for c in kept if pd.notna(table[c].iloc[row])} for row in range(n)]
