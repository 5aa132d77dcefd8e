"""The prefix stage (LLaVA-style): the projector learns to turn a subject's vectors into soft
tokens from which the frozen LLM writes that subject's report.

The loss is the language-modelling loss of the report after ``[soft prefix][prompt]`` (prompt
and prefix positions masked). Each training subject's prompt follows one of the layouts reports
are generated with (:data:`~neuroomics_bridge.reports.prompts.LAYOUTS`), drawn per
``(seed, epoch, subject)`` with the weights in ``layouts``, and states that subject's own evidence
(covariates, zero-shot probabilities): generation then asks what training taught. Optional LoRA
inside the backbone (LLaVA's second step) trains with the projector. Validation uses the
``"prefix_only"`` layout, so the best checkpoint is the one whose prefix carries the most.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from neuroomics_bridge.reports.prompts import CLASS_PROMPT, ClassPrompt, get_layout, report_prompt
from neuroomics_bridge.reports.report import Evidence

__all__ = ["PREFIX_LAYOUTS", "PrefixStage"]

PREFIX_LAYOUTS: dict[str, float] = {"full": 0.4, "prefix_only": 0.5, "evidence_only": 0.1}
"""Training mixture of prompt layouts: mostly the two with a subject prefix, a little without."""
VALIDATION_LAYOUT = "prefix_only"


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
    """

    layouts: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(PREFIX_LAYOUTS))
    class_prompt: ClassPrompt = CLASS_PROMPT
    evidence: dict[str, list[Evidence]] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in self.layouts:
            get_layout(name)  # an unknown name fails now, not at the first step

    def trains(self, adapter_parameter: str) -> bool:
        """Only the prefix projector trains here (and LoRA in the backbone, if any)."""
        return adapter_parameter.startswith("projector.")

    def on_fit_start(self, module: Any, datamodule: Any) -> None:
        """Gather each training and validation subject's evidence once (the prompts state it)."""
        classes = sorted(set(datamodule.cohort.labels or []))
        for fold in ("train", "val"):
            cohort = getattr(datamodule.split, fold)
            self.evidence[fold] = module.bridge.evidence(
                cohort.features, covariates=cohort.covariates, classes=classes, class_prompt=self.class_prompt
            )

    def on_fit_end(self, module: Any, datamodule: Any) -> None:
        """Nothing to calibrate after this stage."""

    def loss(self, module: Any, batch: dict[str, Any], fold: str) -> torch.Tensor:
        """Mean per-token NLL of the batch's reports, each after its own prefix and prompt."""
        names = [self._layout_name(module, int(i), fold) for i in batch["index"]]
        layouts = [get_layout(name) for name in names]
        task = module.bridge.config.report_prompt
        evidence = self.evidence[fold]
        prompts = [
            report_prompt(task, evidence[int(i)], layout) for i, layout in zip(batch["index"], layouts, strict=True)
        ]
        with_prefix = torch.tensor([layout.prefix for layout in layouts], device=module.device)
        present = {m: p & with_prefix for m, p in batch["present"].items()}  # no prefix: the "absent" tokens
        nll, tokens = module.bridge.report_nll(batch["features"], present, list(batch["text"]), prompts)
        return nll.sum() / tokens.sum()

    def _layout_name(self, module: Any, index: int, fold: str) -> str:
        if fold != "train":
            return VALIDATION_LAYOUT
        names = list(self.layouts)
        weights = np.asarray([self.layouts[n] for n in names], dtype=float)
        rng = np.random.default_rng([module.seed, module.current_epoch, index, 7])
        return str(rng.choice(names, p=weights / weights.sum()))
