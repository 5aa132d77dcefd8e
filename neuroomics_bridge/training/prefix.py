"""The prefix stage (LLaVA-style): the projector learns to turn a subject's vectors into soft
tokens from which the frozen LLM writes that subject's report.

The loss is the language-modelling loss of the report after ``[soft prefix][prompt]`` (prompt
and prefix positions masked). Each training subject's prompt follows one of the layouts reports
are generated with (:data:`~neuroomics_bridge.reports.prompts.LAYOUTS`), drawn per
``(seed, epoch, subject)`` with the weights in ``layouts``, and states that subject's own evidence
(covariates, zero-shot probabilities): generation then asks what training taught. Optional LoRA
inside the backbone (LLaVA's second step) trains with the projector. Validation uses the
``"prefix_only"`` layout, so the best checkpoint is the one whose prefix carries the most.

Reports of one cohort share most of their words (section names, templates); what tells subjects
apart (a grade, a gene, a region) is a few rarer tokens, and a loss averaged over every token
teaches those least. With ``content_weight > 1`` the tokens found in at most
``max_document_frequency`` of the training reports weigh that much more in the loss
(:func:`content_token_weights`); validation and every perplexity stay unweighted.

Every row is padded to the longest of its batch, and the batch runs packed (the backbone's
:meth:`~neuroomics_bridge.backbone.text.TextBackbone.last_hidden_state`): only attention computes
on the padding. ``group_by_length=True`` batches subjects of similar ``[prompt][report]`` length
(the prompt's length follows its layout). It is off by default: on the demo it cut padding from
17% to 4% of the tokens but cost grounding (three seeds: full reports' severity 0.75 -> 0.64,
below the retrieval copy's 0.66; README), since a batch then holds one layout and reports alike
instead of a mix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from neuroomics_bridge.errors import DataError
from neuroomics_bridge.reports.prompts import CLASS_PROMPT, ClassPrompt, PromptLayout, get_layout, report_prompt
from neuroomics_bridge.reports.report import Evidence

__all__ = ["PREFIX_LAYOUTS", "PrefixStage", "content_token_weights"]

PREFIX_LAYOUTS: dict[str, float] = {"full": 0.4, "prefix_only": 0.5, "evidence_only": 0.1}
"""Training mixture of prompt layouts: mostly the two with a subject prefix, a little without."""
CONTENT_WEIGHT = 3.0
"""Loss weight of rare report tokens: on the demo (seed 0) weight 3 lifted the severity grade
from 0.46 to 0.65 and the gene programme from 0.93 to 1.0 in prefix-only reports (README)."""
MAX_DOCUMENT_FREQUENCY = 0.5
"""A token in more than half of the training reports is template, not content."""
VALIDATION_LAYOUT = "prefix_only"


def content_token_weights(
    reports_token_ids: Sequence[Sequence[int]], vocab_size: int, *, weight: float, max_document_frequency: float
) -> torch.Tensor:
    """Loss weight per token id: ``weight`` for the ids that occur in at least one and at most
    ``max_document_frequency`` of the reports, 1 for every other id.

    Parameters
    ----------
    reports_token_ids
        The training reports, tokenised (one sequence of ids per report).
    vocab_size
        Length of the returned vector (the backbone's vocabulary).
    weight, max_document_frequency
        The weight of a content token, and the largest share of reports it may occur in.

    Returns
    -------
    torch.Tensor
        ``(vocab_size,)`` float32 weights, for ``Bridge.report_nll(token_weights=...)``.
    """
    _check_content_weighting(weight, max_document_frequency)
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in reports_token_ids:
        counts[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
    frequency = counts / max(len(reports_token_ids), 1)
    content = (counts > 0) & (frequency <= max_document_frequency)
    return torch.where(content, torch.tensor(float(weight)), torch.tensor(1.0)).float()


def _check_content_weighting(weight: float, max_document_frequency: float) -> None:
    if weight <= 0 or not 0 < max_document_frequency <= 1:
        raise DataError(
            f"content weighting: expected weight > 0 and 0 < max_document_frequency <= 1, "
            f"got {weight} and {max_document_frequency}"
        )


@dataclasses.dataclass
class PrefixStage:
    """What the prefix stage trains and how it scores a batch (used by ``AlignmentModule``).

    Parameters
    ----------
    layouts
        Layout name -> share of training prompts in that layout.
    class_prompt
        The zero-shot class texts behind the probabilities a ``"full"`` prompt states (a template
        or a mapping class -> text).
    content_weight, max_document_frequency
        Training-loss weight of the report tokens that occur in at most that share of the
        training reports (1: every token weighs the same).
    group_by_length
        Batch training subjects of similar row length (see
        :class:`~neuroomics_bridge.training.data.SubjectSampler`): less padding in attention
        (17% -> 4% of the demo's tokens), worse grounding on the demo (module docstring), so off
        by default.
    """

    layouts: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(PREFIX_LAYOUTS))
    class_prompt: ClassPrompt = CLASS_PROMPT
    content_weight: float = CONTENT_WEIGHT
    max_document_frequency: float = MAX_DOCUMENT_FREQUENCY
    group_by_length: bool = False
    evidence: dict[str, list[Evidence]] = dataclasses.field(default_factory=dict, repr=False)
    token_weights: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    report_lengths: list[int] = dataclasses.field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for name in self.layouts:
            get_layout(name)  # an unknown name fails now, not at the first step
        _check_content_weighting(self.content_weight, self.max_document_frequency)  # now, not at fit start

    def trains(self, adapter_parameter: str) -> bool:
        """Only the prefix projector trains here (and LoRA in the backbone, if any)."""
        return adapter_parameter.startswith("projector.")

    def on_fit_start(self, module: Any, datamodule: Any) -> None:
        """Gather each training and validation subject's evidence once (the prompts state it), and
        (``group_by_length``) let the training batches group subjects of similar row length."""
        classes = sorted(set(datamodule.cohort.labels or []))
        for fold in ("train", "val"):
            cohort = getattr(datamodule.split, fold)
            self.evidence[fold] = module.bridge.evidence(
                cohort.features, covariates=cohort.covariates, classes=classes, class_prompt=self.class_prompt
            )
        backbone = module.bridge.backbone
        reports = backbone.tokenize(list(datamodule.split.train.reports or []), special_tokens=False)
        self.report_lengths = [len(ids) for ids in reports]
        if self.group_by_length:
            datamodule.train_lengths = lambda epoch: self.row_lengths(module, epoch)
        if self.content_weight != 1:
            self.token_weights = content_token_weights(
                reports,
                backbone.model.get_output_embeddings().weight.shape[0],
                weight=self.content_weight,
                max_document_frequency=self.max_document_frequency,
            ).to(module.device)

    def on_fit_end(self, module: Any, datamodule: Any) -> None:
        """Nothing to calibrate after this stage."""

    def row_lengths(self, module: Any, epoch: int) -> list[int]:
        """Tokens of each training subject's ``[prompt][report]`` row in ``epoch`` (the soft prefix,
        the same for every row, left out): its prompt follows the layout drawn for that epoch."""
        indices = range(len(self.report_lengths))
        prompts, _ = self._prompts(module, indices, epoch, "train")
        prompt_ids = module.bridge.backbone.tokenize(prompts)
        return [len(ids) + report for ids, report in zip(prompt_ids, self.report_lengths, strict=True)]

    def loss(self, module: Any, batch: dict[str, Any], fold: str) -> torch.Tensor:
        """Mean per-token NLL of the batch's reports, each after its own prefix and prompt."""
        prompts, layouts = self._prompts(module, [int(i) for i in batch["index"]], module.current_epoch, fold)
        with_prefix = torch.tensor([layout.prefix for layout in layouts], device=module.device)
        present = {m: p & with_prefix for m, p in batch["present"].items()}  # no prefix: the "absent" tokens
        weights = self.token_weights if fold == "train" else None
        nll, tokens = module.bridge.report_nll(batch["features"], present, list(batch["text"]), prompts, weights)
        return nll.sum() / tokens.sum()

    def _prompts(
        self, module: Any, indices: Sequence[int], epoch: int, fold: str
    ) -> tuple[list[str], list[PromptLayout]]:
        """The prompts of the ``fold`` subjects at ``indices`` in ``epoch``, and their layouts."""
        layouts = [get_layout(self._layout_name(module.seed, epoch, index, fold)) for index in indices]
        task = module.bridge.config.report_prompt
        evidence = self.evidence[fold]
        prompts = [report_prompt(task, evidence[index], layout) for index, layout in zip(indices, layouts, strict=True)]
        return prompts, layouts

    def _layout_name(self, seed: int, epoch: int, index: int, fold: str) -> str:
        if fold != "train":
            return VALIDATION_LAYOUT
        names = list(self.layouts)
        weights = np.asarray([self.layouts[n] for n in names], dtype=float)
        rng = np.random.default_rng([seed, epoch, index, 7])
        return str(rng.choice(names, p=weights / weights.sum()))
