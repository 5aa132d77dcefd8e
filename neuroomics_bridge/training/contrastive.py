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
from neuroomics_bridge.reports.prompts import class_mapping, class_wordings

__all__ = ["ContrastiveStage"]


@dataclasses.dataclass
class ContrastiveStage:
    """What the contrastive stage trains and how it scores a batch (used by ``AlignmentModule``).

    Parameters
    ----------
    text_views
        Pair subjects with one sampled view of their report per epoch (else the whole report).
    class_views, train_labels
        Set at fit start: each class's wordings (when the class prompt gives several), which
        join its training subjects' views, and the training fold's labels.
    """

    text_views: bool = True
    class_views: dict[str, list[str]] = dataclasses.field(default_factory=dict, repr=False)
    train_labels: list[str] = dataclasses.field(default_factory=list, repr=False)

    def trains(self, adapter_parameter: str) -> bool:
        """Every adapter but the prefix projector trains here."""
        return not adapter_parameter.startswith("projector.")

    def on_fit_start(self, module: Any, datamodule: Any) -> None:
        """Centre text vectors on the training reports' mean; encode every text view once.

        With several wordings per class in ``module.class_prompt`` (a prompt ensemble), each
        wording is also a view of every training subject of that class, as CLIP trains on
        several captions of an image.
        """
        train = datamodule.split.train
        training_texts = module.bridge.text_encoder.encode(list(train.reports or []))
        module.adapters.text_center.copy_(training_texts.mean(dim=0))
        self.train_labels = list(train.labels or [])
        names, wordings = class_wordings(class_mapping(module.class_prompt, self.train_labels))
        self.class_views = {name: texts for name, texts in zip(names, wordings, strict=True) if len(texts) > 1}
        module.bridge.text_encoder.encode(
            datamodule.texts() + [t for texts in self.class_views.values() for t in texts]
        )

    def on_fit_end(self, module: Any, datamodule: Any) -> None:
        """Record each modality's mean embedding on the training fold (the modality gap), then
        fit each modality's zero-shot temperature on the validation fold."""
        module.bridge.calibrate(datamodule.split.train)
        val = datamodule.split.val
        if val.labels is not None and val.n_subjects > 1:
            module.bridge.fit_temperature(val, class_mapping(module.class_prompt, datamodule.cohort.labels))

    def loss(self, module: Any, batch: dict[str, Any], fold: str) -> torch.Tensor:
        """Mean open_clip loss over the batch's modality-text (and modality-modality) pairs."""
        texts = list(batch["text"])
        if fold == "train" and self.text_views:  # a subject's view depends on (seed, epoch, subject) only
            texts = [
                str(
                    np.random.default_rng([module.seed, module.current_epoch, int(i)]).choice(self._views(int(i), text))
                )
                for i, text in zip(batch["index"], texts, strict=True)
            ]
        text = module.bridge.text_encoder.encode(texts).to(module.device)
        groups = torch.tensor(text_ids(texts), device=module.device)
        output = module.adapters.contrastive(batch["features"], batch["present"], text, groups)
        for pair, value in output.parts.items():
            module.log(f"{fold}/loss_{pair}", value, batch_size=len(texts), sync_dist=fold == "val")
        return output.loss

    def _views(self, index: int, report: str) -> list[str]:
        """A training subject's text views: its report, the report's sentences, its class's wordings."""
        label = self.train_labels[index] if index < len(self.train_labels) else None
        return report_views(report) + self.class_views.get(label, [])
