"""Bridge: a text backbone plus the adapters that connect gene and brain vectors to it.

The bridge *has* a backbone (it never subclasses a transformers model): the backbone encodes
text and generates; the adapters project modality vectors into the shared space
(CLIP-style) and into the backbone's token space (LLaVA-style). ``save_pretrained`` writes the
adapters only (safetensors), a ``config.json`` recording which backbone they were trained on
(name and weights hash) and a model card; ``from_pretrained`` refuses any other backbone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch

from neuroomics_bridge import __version__
from neuroomics_bridge.adapters.config import BridgeConfig, LoRAConfig
from neuroomics_bridge.adapters.module import TEXT, BridgeAdapters
from neuroomics_bridge.backbone.cache import CachedTextEncoder
from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.bridge.card import model_card
from neuroomics_bridge.bridge.generation import ReportGenerationMixin
from neuroomics_bridge.bridge.scverse import (
    is_anndata,
    matrix,
    rep_keys,
    write_embedding,
    write_zero_shot,
)
from neuroomics_bridge.data.cohort import Cohort
from neuroomics_bridge.errors import CorruptFileError, DataError, InvalidModelError, MissingFileError
from neuroomics_bridge.io import atomic_directory, read_manifest, read_tensors
from neuroomics_bridge.reports.prompts import ClassTexts, class_wordings

if TYPE_CHECKING:
    import anndata as ad

__all__ = ["Bridge", "BRIDGE_FORMAT", "embed_vectors", "load_adapters"]

BRIDGE_FORMAT = "neuroomics-bridge/bridge-v1"
ADAPTERS_FILE = "adapters.safetensors"
CONFIG_FILE = "config.json"  # which backbone, the modality widths, the adapters' settings
LORA_FILE = "backbone_lora.safetensors"  # LoRA inside the backbone, when the prefix stage used it
BUNDLE_MANIFEST = "bundle.json"  # a bridge bundle's (bridge/bundle.py): its folder holds a bridge and more


class Bridge(ReportGenerationMixin):
    """Backbone + adapters: ``embed``, ``embed_text``, ``zero_shot``, soft ``prefix`` tokens.

    Parameters
    ----------
    backbone
        The text backbone (encoder and decoder).
    modality_dims
        Input width of each modality, e.g. ``{"gene": 50, "brain": 32}``.
    config
        Adapter shapes and losses (:class:`BridgeConfig`).
    """

    def __init__(self, backbone: TextBackbone, modality_dims: Mapping[str, int], config: BridgeConfig | None = None):
        self.backbone = backbone
        config = config or BridgeConfig()
        if config.prefix_token_norm is None:  # soft tokens start at the scale of the backbone's own
            norm = backbone.model.get_input_embeddings().weight.detach().float().norm(dim=1).mean()
            config = dataclasses.replace(config, prefix_token_norm=round(float(norm), 4))
        self.config = config
        self.adapters = BridgeAdapters(modality_dims, backbone.hidden_size, backbone.hidden_size, self.config)
        self.text_encoder = CachedTextEncoder(
            backbone,
            pooling=self.config.text_pooling,
            template=self.config.text_template,
            base_weights=self.lora_off,
        )
        self.card_info: dict[str, Any] = {}  # training data and metrics, written into the model card
        self.lora: LoRAConfig | None = None  # LoRA inside the backbone (prefix stage, optional)

    @property
    def modality_dims(self) -> dict[str, int]:
        """Input width of each modality, e.g. ``{"gene": 32, "brain": 32}``."""
        return dict(self.adapters.modality_dims)

    @property
    def modalities(self) -> list[str]:
        """The modalities, in the order their soft-token blocks appear."""
        return list(self.adapters.modality_dims)

    # ------------------------------------------------------------------------------ aligned space
    @torch.inference_mode()
    def embed(
        self,
        modality: str,
        X: np.ndarray | ad.AnnData,
        *,
        use_rep: str | None = None,
        key_added: str | None = None,
        copy: bool = False,
    ) -> np.ndarray | ad.AnnData | None:
        """Unit vectors ``(n, embed_dim)`` in the aligned space; absent (all-NaN) rows stay NaN.

        Parameters
        ----------
        modality
            Which modality's head embeds ``X``.
        X
            ``(n, d_modality)`` vectors, or an AnnData whose rows (subjects or cells) hold them in
            ``obsm[use_rep]`` (default ``obsm[modality]``, ``obsm["X_" + modality]``, else ``X``).
        use_rep, key_added, copy
            AnnData only: where to read, the key written (default ``"X_nob_<modality>"``:
            ``obsm[key]`` the embedding, ``uns[key]`` what produced it), and scanpy's ``copy``
            (return a new AnnData instead of writing into ``X``).

        Returns
        -------
        numpy.ndarray or anndata.AnnData or None
            The embeddings for an array; for an AnnData, ``None`` (written in place) or the copy.
        """
        if is_anndata(X):
            rep = rep_keys(X, [modality], use_rep)[modality]
            return write_embedding(
                X,
                self.embed(modality, matrix(X, rep, modality=modality)),
                key=key_added or f"X_nob_{modality}",
                params=self._provenance(modality, rep),
                copy=copy,
            )
        return embed_vectors(self.adapters, modality, X)

    @torch.inference_mode()
    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Unit vectors ``(n, embed_dim)`` of texts (backbone-encoded once, then cached on disk)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.adapters.eval()
        return self.adapters.embed_text(self.text_encoder.encode(texts)).numpy()

    def calibrate(self, reference: Cohort) -> None:
        """Record each modality's mean embedding over ``reference`` subjects (labels unused).

        Contrastive embeddings of different modalities sit in separate cones of the shared space
        (the modality gap, Liang et al. 2022), and a class prompt close to that cone's centre
        wins for every subject. ``zero_shot`` compares class texts with embeddings centred on
        this mean, so that what distinguishes subjects decides. ``fit_alignment`` calibrates on
        the training fold.
        """
        for modality in self.modalities:
            rows = reference.present(modality)
            if rows.any():
                mean = np.nanmean(self.embed(modality, reference.features[modality][rows]), axis=0)
                getattr(self.adapters, f"gap_{modality}").copy_(torch.from_numpy(mean))

    def zero_shot(
        self,
        modality: str,
        X: np.ndarray | ad.AnnData,
        class_texts: ClassTexts,
        *,
        use_rep: str | None = None,
        key_added: str | None = None,
        copy: bool = False,
        calibrated: bool = True,
        center_prompts: bool = False,
    ) -> np.ndarray | ad.AnnData | None:
        """Class probabilities ``(n, n_classes)``: a softmax over the similarities to each class.

        Embeddings are centred on the calibration mean (see :meth:`calibrate`), the learned
        temperature of the modality-text pair scales the similarities, and the temperature fitted
        on a validation fold (:meth:`fit_temperature`; 1 until then) divides them. A class given
        several wordings is the normalised mean of their unit text embeddings (CLIP's prompt
        ensemble), so no single phrasing decides. Absent rows are NaN.

        Parameters
        ----------
        modality
            Which modality ``X`` holds.
        X
            ``(n, d_modality)`` vectors, or an AnnData (read as in :meth:`embed`).
        class_texts
            Per class one text or several wordings, as a sequence or a mapping class name ->
            text(s) (the names label the classes; a sequence's classes are named by their first
            wording).
        use_rep, key_added, copy
            AnnData only: where to read; the key written (default ``"nob_<modality>_zero_shot"``):
            ``obs[key]`` the most probable class (categorical), ``obsm[key + "_probabilities"]``
            the probabilities, ``uns[key]`` the classes, texts and what produced them; scanpy's
            ``copy``.
        calibrated
            Apply the fitted temperature (``False``: the raw contrastive probabilities).
        center_prompts
            Centre the class texts on their own mean rather than the training texts' (see
            :meth:`class_embeddings`): for classes worded otherwise than in training (README,
            "Zero-shot in other words").

        Returns
        -------
        numpy.ndarray or anndata.AnnData or None
            The probabilities for an array; for an AnnData, ``None`` (written in place) or the copy.
        """
        _check_modality(self.adapters, modality)
        names, wordings = class_wordings(class_texts)
        if not names:
            raise DataError(f"zero_shot({modality!r}): expected at least one class text, got none")
        if is_anndata(X):
            rep = rep_keys(X, [modality], use_rep)[modality]
            return write_zero_shot(
                X,
                self.zero_shot(
                    modality,
                    matrix(X, rep, modality=modality),
                    dict(zip(names, wordings, strict=True)),
                    calibrated=calibrated,
                    center_prompts=center_prompts,
                ),
                names,
                key=key_added or f"nob_{modality}_zero_shot",
                params={
                    **self._provenance(modality, rep),
                    "class_texts": [" | ".join(w) for w in wordings],
                    "center_prompts": center_prompts,
                },
                copy=copy,
            )
        scale = float(self.adapters.losses[f"{modality}-{TEXT}"].similarity_scale())
        if calibrated:
            scale /= float(getattr(self.adapters, f"temperature_{modality}"))
        centred = self.embed(modality, X) - getattr(self.adapters, f"gap_{modality}").numpy()
        present = ~np.isnan(centred).all(axis=1)
        logits = scale * (centred[present] @ self.class_embeddings(wordings, center_prompts=center_prompts).T)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = np.full((len(centred), len(wordings)), np.nan, dtype=weights.dtype)
        probabilities[present] = weights / weights.sum(axis=1, keepdims=True)
        return probabilities

    @torch.inference_mode()
    def class_embeddings(self, wordings: Sequence[Sequence[str]], *, center_prompts: bool = False) -> np.ndarray:
        """One unit vector per class: the normalised mean of its wordings' text embeddings.

        With ``center_prompts`` (and at least two classes) the wordings' backbone vectors are
        centred on the mean of the classes (each class's wordings averaged first) instead of on
        the training texts' mean: what a wording set shares (lay words, abbreviations, a
        template) then drops out before the text head, as the modality gap does on the subject
        side (:meth:`calibrate`), and only what tells its classes apart is compared.
        """
        flat = [text for texts in wordings for text in texts]
        bounds = np.cumsum([0, *(len(texts) for texts in wordings)])
        vectors = self.text_encoder.encode(flat)
        center = None
        if center_prompts and len(wordings) > 1:
            center = torch.stack([vectors[a:b].mean(dim=0) for a, b in itertools.pairwise(bounds)]).mean(dim=0)
        self.adapters.eval()
        embedded = self.adapters.embed_text(vectors, center).numpy()
        means = np.stack([embedded[a:b].mean(axis=0) for a, b in itertools.pairwise(bounds)])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def fit_temperature(self, cohort: Cohort, class_texts: ClassTexts) -> dict[str, float]:
        """Fit each modality's zero-shot temperature on a labelled (validation) cohort.

        The temperature minimises the negative log-likelihood of the cohort's labels under the
        raw zero-shot probabilities (:func:`~neuroomics_bridge.evaluation.calibration.fit_temperature`);
        it changes no prediction, only how sure they say they are. Modalities that no labelled
        subject has keep theirs.

        Parameters
        ----------
        cohort
            Encoded subjects with labels, none of them used for training the heads.
        class_texts
            The classes, as :meth:`zero_shot` takes them; labels outside them are left out.

        Returns
        -------
        dict[str, float]
            Modality -> fitted temperature (also stored in the adapters and saved with them).
        """
        from neuroomics_bridge.evaluation.calibration import fit_temperature

        if cohort.labels is None:
            raise DataError("fit_temperature: the cohort needs labels")
        names, _ = class_wordings(class_texts)
        index = {name: i for i, name in enumerate(names)}
        fitted = {}
        for modality in (m for m in self.modalities if m in cohort.features):
            rows = cohort.present(modality) & np.isin(cohort.labels, names)
            if rows.sum() < 2:
                continue
            probabilities = self.zero_shot(modality, cohort.features[modality][rows], class_texts, calibrated=False)
            labels = [index[label] for label, keep in zip(cohort.labels, rows, strict=True) if keep]
            fitted[modality] = fit_temperature(probabilities, labels)
            getattr(self.adapters, f"temperature_{modality}").fill_(fitted[modality])
        return fitted

    def _provenance(self, modality: str, use_rep: str) -> dict[str, str]:
        """What an AnnData's ``uns`` records about a result: the bridge and where it read."""
        return {
            "modality": modality,
            "use_rep": use_rep,
            "model": self.backbone.name,
            "adapters": self.adapter_id,
        }

    @property
    def adapter_id(self) -> str:
        """A short fingerprint of the adapter weights, recorded in every report."""
        digest = hashlib.sha256()
        for key, value in sorted(self.adapters.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().float().numpy().tobytes())
        return f"sha256:{digest.hexdigest()[:12]}"

    # ------------------------------------------------------------------------------ token space
    def prefix(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """Soft prefix tokens ``(n, prefix_tokens * n_modalities, hidden_size)`` for a batch.

        A modality missing from ``inputs``, or an all-NaN row, is treated as absent for that subject.
        """
        n = {len(x) for x in inputs.values()}
        if len(n) != 1:
            raise DataError(f"prefix inputs: every modality needs the same number of rows, got {sorted(n)}")
        (rows,) = n
        features, present = {}, {}
        for modality, dim in self.modality_dims.items():
            x = (
                _checked_vectors(self.adapters, modality, inputs[modality])
                if modality in inputs
                else torch.full((rows, dim), float("nan"))
            )
            features[modality], present[modality] = x, ~torch.isnan(x).all(dim=1)
        return self.adapters.prefix(features, present)

    def report_nll(
        self,
        features: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor],
        reports: Sequence[str],
        prompts: Sequence[str] | None = None,
        token_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative log-likelihood of each report given its subject's prefix and its prompt.

        Parameters
        ----------
        features, present
            Modality -> ``(n, d_m)`` vectors and ``(n,)`` presence flags.
        reports
            The ``n`` target texts.
        prompts
            One prompt per report (see :func:`~neuroomics_bridge.reports.prompts.report_prompt`);
            default: the evidence-free prompt of ``config.report_prompt`` for every row.
        token_weights
            Optional ``(vocab_size,)`` weight of each target token id (see
            :func:`~neuroomics_bridge.training.prefix.content_token_weights`); default 1 for all.

        Returns
        -------
        nll, tokens : torch.Tensor
            Summed (weighted) NLL per report and its number (weight sum) of scored tokens, both
            ``(n,)``. The input is ``[soft prefix][prompt][report][EOS]``; only report and EOS
            tokens are scored. Gradients reach the prefix projector (and LoRA weights in the
            backbone, if any).
        """
        import torch.nn.functional as F

        from neuroomics_bridge.reports.prompts import report_prompt

        backbone = self.backbone
        prefix = self.adapters.prefix(features, present)
        texts = list(prompts) if prompts is not None else [report_prompt(self.config.report_prompt)] * len(reports)
        if len(texts) != len(reports):
            raise DataError(f"report_nll: {len(reports)} reports but {len(texts)} prompts")
        prompt_ids = backbone.tokenize(texts)
        eos = backbone.tokenizer.eos_token_id
        targets = [
            [*ids[: backbone.context_length - prefix.shape[1] - len(prompt) - 1], eos]
            for ids, prompt in zip(backbone.tokenize(list(reports), special_tokens=False), prompt_ids, strict=True)
        ]
        rows_ids = [prompt + target for prompt, target in zip(prompt_ids, targets, strict=True)]
        embeds, mask = backbone.prefixed_inputs(rows_ids, prefix, padding_side="right")
        labels = torch.full(mask.shape, -100, dtype=torch.long, device=embeds.device)
        for row, (prompt, target) in enumerate(zip(prompt_ids, targets, strict=True)):
            start = prefix.shape[1] + len(prompt)
            labels[row, start : start + len(target)] = torch.tensor(target, device=embeds.device)
        # The LM head runs only where a report token is predicted (a fifth of the compute of a
        # full forward over a 49k vocabulary at every position of prefix and prompt).
        hidden = backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask)
        scored = labels[:, 1:] != -100
        logits = backbone.model.get_output_embeddings()(hidden[:, :-1][scored]).float()
        target_ids = labels[:, 1:][scored]
        token_nll = F.cross_entropy(logits, target_ids, reduction="none")
        weight = token_nll.new_ones(len(target_ids)) if token_weights is None else token_weights[target_ids]
        rows = torch.nonzero(scored)[:, 0]
        per_report = token_nll.new_zeros(len(targets)).index_add(0, rows, token_nll * weight)
        return per_report, weight.new_zeros(len(targets)).index_add(0, rows, weight)

    def add_lora(self, lora: LoRAConfig) -> None:
        """Put LoRA adapters (peft) inside the frozen backbone, to train with the prefix projector.

        The backbone's own weights stay untouched (and keep their hash); the LoRA weights are
        saved with the bridge and put back by :meth:`from_pretrained`.
        """
        from peft import inject_adapter_in_model

        if self.lora is not None:
            raise DataError("this bridge's backbone already holds LoRA adapters")
        self.backbone.check_trainable("LoRA in the backbone")
        lora.check_targets(self.backbone.model, self.backbone.name)
        _ = self.backbone.weights_hash  # identify the base weights before the adapters go in
        inject_adapter_in_model(lora.to_peft(), self.backbone.model)
        self.lora = lora

    @contextlib.contextmanager
    def lora_off(self) -> Iterator[None]:
        """Run the backbone without its LoRA adapters (text embeddings live in the base model's space)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.backbone.model.modules() if isinstance(m, BaseTunerLayer)] if self.lora else []
        trainable = {id(p): p.requires_grad for layer in layers for p in layer.parameters()}
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)
                for parameter in layer.parameters():  # peft's enable_adapters also flips requires_grad
                    parameter.requires_grad_(trainable[id(parameter)])

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The LoRA weights inside the backbone (empty without :meth:`add_lora`)."""
        state = self.backbone.model.state_dict() if self.lora is not None else {}
        return {key: value.detach().cpu().contiguous() for key, value in state.items() if "lora_" in key}

    def load_lora_state(self, state: Mapping[str, torch.Tensor], *, source: str = "LoRA weights") -> None:
        """Load :meth:`lora_state` output; every LoRA weight must be given, nothing else."""
        expected = set(self.lora_state())
        if set(state) != expected:
            raise CorruptFileError(
                f"{source}: LoRA weights do not match the config (missing {sorted(expected - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - expected)[:3]})"
            )
        self.backbone.model.load_state_dict(dict(state), strict=False)

    # ------------------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write adapters (safetensors), ``config.json`` and a model card ``README.md``, atomically.

        Raises
        ------
        DataError
            When ``directory`` is a folder of other files, or a bridge bundle: the bridge alone
            would replace it and delete the bundle's encoders and reference subjects.
        """
        from safetensors.torch import save_file

        target = Path(directory)
        if (target / BUNDLE_MANIFEST).is_file():
            raise DataError(
                f"{target}: a bridge bundle ({BUNDLE_MANIFEST}); saving the bridge alone would delete its encoders "
                "and reference subjects: save the whole BridgeBundle there, or the bridge to another folder"
            )
        config = {
            "format": BRIDGE_FORMAT,
            "library_version": __version__,
            "bridge_config": self.config.to_dict(),
            "modality_dims": self.modality_dims,
            "backbone": {
                "name": self.backbone.name,
                "weights_sha256": self.backbone.weights_hash,
                "hidden_size": self.backbone.hidden_size,
            },
            "card": self.card_info,
            "lora": self.lora.to_dict() if self.lora is not None else None,
        }
        state = {key: value.detach().cpu().contiguous() for key, value in self.adapters.state_dict().items()}
        with atomic_directory(target, kind="bridge", marker=ADAPTERS_FILE) as tmp:
            save_file(state, tmp / ADAPTERS_FILE, metadata={"format": BRIDGE_FORMAT})
            if self.lora is not None:
                save_file(self.lora_state(), tmp / LORA_FILE, metadata={"format": BRIDGE_FORMAT})
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
            (tmp / "README.md").write_text(model_card(config))
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], backbone: TextBackbone | None = None) -> Self:
        """Load adapters saved by :meth:`save_pretrained` onto the backbone they were trained on.

        Without ``backbone`` the recorded registry name or path is loaded. A backbone whose
        weights hash differs from the recorded one is refused.
        """
        folder = Path(directory)
        config = _saved_config(folder)
        name, sha256 = config["backbone"]["name"], config["backbone"]["weights_sha256"]
        backbone = backbone or TextBackbone.from_pretrained(name)
        if backbone.weights_hash != sha256:
            raise InvalidModelError(
                f"{folder}: adapters were trained on backbone {name!r} (weights sha256 "
                f"{sha256[:12]}...), not on {backbone.name!r} "
                f"(sha256 {backbone.weights_hash[:12]}...); load the recorded backbone or retrain the adapters"
            )
        config_file = folder / CONFIG_FILE
        settings = BridgeConfig.from_dict(config["bridge_config"], source=str(config_file))
        bridge = cls(backbone, config["modality_dims"], settings)
        _load_adapter_weights(bridge.adapters, folder)
        if config.get("lora"):
            bridge.add_lora(LoRAConfig.from_dict(config["lora"], source=str(config_file)))
            lora_file = folder / LORA_FILE
            if not lora_file.is_file():
                raise MissingFileError(f"{lora_file}: missing; {config_file} records LoRA adapters")
            bridge.load_lora_state(read_tensors(lora_file), source=str(lora_file))
        bridge.card_info = config.get("card", {})
        return bridge


def load_adapters(directory: str | os.PathLike[str]) -> BridgeAdapters:
    """The trained adapters of a bridge saved by :meth:`Bridge.save_pretrained`, without its backbone.

    Enough to embed modality vectors into the aligned space (:func:`embed_vectors`), which is
    all ``nob index --bridge`` needs: it then neither imports transformers nor reads the
    backbone's weights. Nothing here checks the adapters against a backbone; text and reports
    need :meth:`Bridge.from_pretrained`.

    Parameters
    ----------
    directory
        A saved bridge, or a bundle folder (``nob demo``'s ``bridge/``).

    Returns
    -------
    BridgeAdapters
        The heads, prefix projector and fitted buffers, in eval mode.

    Raises
    ------
    MissingFileError, CorruptFileError
        When the folder is not a saved bridge, or its config and weights do not agree.
    """
    folder = Path(directory)
    config = _saved_config(folder)
    config_file = folder / CONFIG_FILE
    hidden_size = config["backbone"].get("hidden_size")
    if not isinstance(hidden_size, int) or isinstance(hidden_size, bool):
        raise CorruptFileError(f"{config_file}: expected backbone.hidden_size, an integer; got {hidden_size!r}")
    settings = BridgeConfig.from_dict(config["bridge_config"], source=str(config_file))
    adapters = BridgeAdapters(config["modality_dims"], hidden_size, hidden_size, settings)
    _load_adapter_weights(adapters, folder)
    return adapters.eval()


@torch.inference_mode()
def embed_vectors(adapters: BridgeAdapters, modality: str, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """Modality vectors to unit vectors in the aligned space (:meth:`Bridge.embed` for arrays,
    given only the adapters).

    Parameters
    ----------
    adapters
        A bridge's adapters (``bridge.adapters``, or :func:`load_adapters`).
    modality
        Which modality's head embeds ``X``.
    X
        ``(n, d_modality)`` vectors; an all-NaN row is an absent subject.

    Returns
    -------
    numpy.ndarray
        ``(n, embed_dim)`` unit vectors; absent rows stay NaN. The head runs in eval mode (no
        dropout) and the adapters' own mode is left as it was.

    Raises
    ------
    DataError
        On an unknown modality, another width, or a row with NaN in some columns only.
    """
    x = _checked_vectors(adapters, modality, X)
    present = ~torch.isnan(x).all(dim=1)
    head = adapters.heads[modality]
    training = head.training
    try:
        out = head.eval()(torch.nan_to_num(x))
    finally:
        head.train(training)
    out[~present] = float("nan")
    return out.numpy()


def _check_modality(adapters: BridgeAdapters, modality: str) -> None:
    if modality not in adapters.modality_dims:
        raise DataError(f"unknown modality {modality!r}; this bridge has {list(adapters.modality_dims)}")


def _checked_vectors(adapters: BridgeAdapters, modality: str, X: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``X`` as float32, refused unless ``(n, d_modality)`` with each row complete or all NaN (absent)."""
    _check_modality(adapters, modality)
    width = adapters.modality_dims[modality]
    x = torch.as_tensor(np.asarray(X, dtype=np.float32) if not isinstance(X, torch.Tensor) else X, dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != width:
        raise DataError(f"{modality}: expected shape (n, {width}), got {tuple(x.shape)}")
    missing = torch.isnan(x)
    partial = missing.any(dim=1) & ~missing.all(dim=1)  # all-NaN means absent; some NaN is damaged data
    if partial.any():
        row = int(torch.nonzero(partial)[0, 0])
        columns = torch.nonzero(missing[row])[:, 0].tolist()
        raise DataError(
            f"{modality}: row {row} has NaN in column(s) {columns[:10]}{' ...' if len(columns) > 10 else ''} "
            f"but not in all {x.shape[1]}; expected a complete vector or an all-NaN (absent) row "
            f"({int(partial.sum())} such row(s) in all)"
        )
    return x


def _saved_config(folder: Path) -> dict[str, Any]:
    """A saved bridge's ``config.json``, refused unless it names the backbone, the modalities and
    the adapters' settings, and the adapters' weights are beside it."""
    config_file, weights_file = folder / CONFIG_FILE, folder / ADAPTERS_FILE
    for file in (config_file, weights_file):
        if not file.is_file():
            raise MissingFileError(f"{file}: missing; {folder} is not a saved bridge")
    config = read_manifest(config_file, BRIDGE_FORMAT)
    recorded = config.get("backbone") if isinstance(config.get("backbone"), dict) else {}
    missing = [f"backbone.{key}" for key in ("name", "weights_sha256") if key not in recorded]
    missing += [key for key in ("modality_dims", "bridge_config") if key not in config]
    if missing:
        raise CorruptFileError(
            f"{config_file}: expected backbone (name, weights_sha256), modality_dims and bridge_config entries; "
            f"no {', '.join(map(repr, missing))}"
        )
    return config


def _load_adapter_weights(adapters: BridgeAdapters, folder: Path) -> None:
    """Load ``adapters.safetensors`` into ``adapters``, refused unless every tensor matches."""
    config_file, weights_file = folder / CONFIG_FILE, folder / ADAPTERS_FILE
    weights = read_tensors(weights_file)
    expected = adapters.state_dict()
    reshaped = [
        f"{key}: expected {tuple(expected[key].shape)}, got {tuple(value.shape)}"
        for key, value in weights.items()
        if key in expected and value.shape != expected[key].shape
    ]
    if reshaped:
        raise CorruptFileError(
            f"{weights_file}: adapter weights of other shapes than {config_file} gives: {reshaped[:5]}"
        )
    missing, unexpected = adapters.load_state_dict(weights, strict=False)
    missing = [key for key in missing if not key.startswith("temperature_")]  # older bridges: none fitted, 1
    if missing or unexpected:
        raise CorruptFileError(
            f"{weights_file}: adapter weights do not match the config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
