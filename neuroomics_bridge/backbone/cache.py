"""CachedTextEncoder: each text is encoded by the backbone once, then read from disk.

A frozen backbone maps a text to the same vector every time, so the contrastive stage encodes
the reports once and an epoch then costs only the small heads. Vectors are stored as
safetensors shards under the user cache, in a folder keyed by the backbone's weights hash, the
pooling and the dtype, and looked up by the SHA-256 of the text; each call appends at most one shard,
written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from neuroomics_bridge.backbone.config import Pooling
from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.io import cache_root, read_arrays, write_arrays

__all__ = ["CachedTextEncoder"]


class CachedTextEncoder:
    """``encode(texts)`` like :meth:`TextBackbone.encode`, computing only texts never seen before.

    Parameters
    ----------
    backbone
        The (frozen) backbone whose vectors are cached.
    pooling
        Passed to :meth:`TextBackbone.encode`; part of the cache key.
    template
        Applied to each text (``template.format(text=...)``) before it is hashed and encoded.
    directory
        The folder of shards (default: under the user cache, see :attr:`directory`).
    base_weights
        A context in which the backbone runs its own weights only (no adapters), entered around
        every backbone call, since vectors are keyed by the base weights' hash.
    """

    def __init__(
        self,
        backbone: TextBackbone,
        *,
        pooling: Pooling = "mean",
        template: str = "{text}",
        directory: str | os.PathLike[str] | None = None,
        base_weights: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.backbone = backbone
        self.base_weights = base_weights  # a context in which the backbone runs its own weights only
        self.pooling = pooling
        self.template = template
        self._directory = Path(directory) if directory is not None else None
        self._vectors: dict[str, np.ndarray] | None = None
        self.encoded_count = 0  # texts this instance had to run through the backbone

    @property
    def directory(self) -> Path:
        """The shard folder: ``<cache>/text/<weights hash>-<pooling>-<dtype>`` (then ``-int8`` or
        ``-bf16-copy`` where the linear layers compute in those) unless one was given."""
        if self._directory is None:
            dtype = str(self.backbone.dtype).removeprefix("torch.")  # bf16 and fp32 embeddings differ slightly
            parts = [self.backbone.weights_hash[:24], self.pooling, dtype]
            parts += [self.backbone.quantization] if self.backbone.quantization else []  # same files, other vectors
            parts += ["bf16-copy"] if self.backbone.kernel == "bf16-copy" else []  # single-token texts differ
            self._directory = cache_root() / "text" / "-".join(parts)
        return self._directory

    def encode(self, texts: Sequence[str], *, batch_size: int = 16, show_progress: bool | None = None) -> torch.Tensor:
        """The backbone's ``encode`` of each templated text, running only the uncached ones.

        New vectors are appended to the cache as one shard.

        Returns
        -------
        torch.Tensor
            ``(len(texts), hidden_size)`` float32.
        """
        vectors = self._load()
        texts = [self.template.format(text=text) for text in texts]
        keys = [_key(text) for text in texts]
        todo = {key: text for key, text in zip(keys, texts, strict=True) if key not in vectors}
        if todo:
            with self.base_weights():  # vectors are keyed by the base weights' hash: no adapters may act
                fresh = self.backbone.encode(
                    list(todo.values()), pooling=self.pooling, batch_size=batch_size, show_progress=show_progress
                ).numpy()
            shard = dict(zip(todo, fresh, strict=True))
            self.directory.mkdir(parents=True, exist_ok=True)
            write_arrays(self.directory / f"{uuid.uuid4().hex}.safetensors", shard, {"pooling": self.pooling})
            vectors.update(shard)
            self.encoded_count += len(todo)
        return torch.from_numpy(np.stack([vectors[key] for key in keys]))

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            if self.directory.is_dir():
                for shard in sorted(self.directory.glob("*.safetensors")):
                    self._vectors.update(read_arrays(shard)[0])
        return self._vectors


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
