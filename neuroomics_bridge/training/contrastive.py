"""The contrastive stage (CLIP-style): modality vectors and report texts into one aligned space.

The backbone is frozen and each text is encoded once (then read from the on-disk text cache), so
an epoch costs only the projection heads. Each training subject is paired, in each epoch, with
one view of its report (the whole report or one of its sentences, drawn from the seed, epoch and
subject); identical texts in a batch are not negatives of each other; modality pairs are aligned
with each other too (open_clip's losses). Validation uses whole reports.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from neuroomics_bridge.data.text import report_views, text_ids

__all__ = ["ContrastiveStage"]


@dataclasses.dataclass
class ContrastiveStage:
    """What the contrastive stage trains and how it scores a batch (used by ``AlignmentModule``).

    Parameters
    ----------
    text_views
        Pair subjects with one sampled view of their report per epoch (else the whole report).
    """

    text_views: bool = True

    def trains(self, adapter_parameter: str) -> bool:
        """Every adapter but the prefix projector trains here."""
        return not adapter_parameter.startswith("projector.")

    def on_fit_start(self, module: Any, datamodule: Any) -> None:
        """Centre text vectors on the training reports' mean; encode every text view once."""
        training_texts = module.bridge.text_encoder.encode(list(datamodule.split.train.reports or []))
        module.adapters.text_center.copy_(training_texts.mean(dim=0))
        module.bridge.text_encoder.encode(datamodule.texts())

    def on_fit_end(self, module: Any, datamodule: Any) -> None:
        """Record each modality's mean embedding on the training fold (zero-shot calibration)."""
        module.bridge.calibrate(datamodule.split.train)

    def loss(self, module: Any, batch: dict[str, Any], fold: str) -> torch.Tensor:
        """Mean open_clip loss over the batch's modality-text (and modality-modality) pairs."""
        texts = list(batch["text"])
        if fold == "train" and self.text_views:  # a subject's view depends on (seed, epoch, subject) only
            texts = [
                str(np.random.default_rng([module.seed, module.current_epoch, int(i)]).choice(report_views(text)))
                for i, text in zip(batch["index"], texts, strict=True)
            ]
        text = module.bridge.text_encoder.encode(texts).to(module.device)
        groups = torch.tensor(text_ids(texts), device=module.device)
        output = module.adapters.contrastive(batch["features"], batch["present"], text, groups)
        for pair, value in output.parts.items():
            module.log(f"{fold}/loss_{pair}", value, batch_size=len(texts), sync_dist=fold == "val")
        return output.loss
