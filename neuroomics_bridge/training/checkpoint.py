"""Lightning checkpoints stored as safetensors, so resuming never unpickles anything.

A Lightning checkpoint is a nested structure of tensors (weights, optimizer moments) and plain
values (epoch, loop counters, callback state, hyper-parameters of the learning-rate schedule).
``SafetensorsCheckpointIO`` stores every tensor in the safetensors body and the structure, with
placeholders for the tensors, as JSON in the header. Anything else in a checkpoint is refused
with an error naming where it sits, instead of being pickled.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import CheckpointIO

from neuroomics_bridge.errors import CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.io import atomic_path, check_safetensors

__all__ = ["SafetensorsCheckpointIO", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "neuroomics-bridge/checkpoint-v1"


class SafetensorsCheckpointIO(CheckpointIO):
    """Save and load Lightning checkpoints without pickle (``Trainer(plugins=[...])``)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` as one safetensors file, atomically.

        Raises
        ------
        DataError
            For a value that is not a tensor, dict, tuple, list, path, NumPy scalar, ``None``,
            bool, int, float or str, naming where it sits.
        """
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        skeleton = _flatten(checkpoint, tensors, "checkpoint")
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"format": CHECKPOINT_FORMAT, "skeleton": json.dumps(skeleton)})

    def load_checkpoint(
        self, path: str | os.PathLike[str], map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read a checkpoint written by :meth:`save_checkpoint`, tensors on ``map_location`` (a device, else CPU).

        Raises
        ------
        MissingFileError
            When there is no such file.
        CorruptFileError
            When the file is damaged or not a checkpoint of this format.
        """
        from safetensors import safe_open

        file = Path(path)
        if not file.is_file():
            raise MissingFileError(f"{file}: no such checkpoint")
        check_safetensors(file)
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        with safe_open(file, framework="pt", device=str(device)) as handle:
            header = handle.metadata() or {}
            if header.get("format") != CHECKPOINT_FORMAT:
                raise CorruptFileError(f"{file}: not a {CHECKPOINT_FORMAT} checkpoint")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        try:
            return _unflatten(json.loads(header["skeleton"]), tensors)
        except (KeyError, TypeError, ValueError) as error:  # no skeleton, or one naming absent tensors
            raise CorruptFileError(
                f"{file}: its skeleton does not match its tensors ({type(error).__name__}: {error})"
            ) from error

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Delete the checkpoint file, if it exists."""
        Path(path).unlink(missing_ok=True)


def _flatten(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensor = value.detach().cpu().contiguous()
        if any(tensor.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in tensors.values()):
            tensor = tensor.clone()  # safetensors refuses tensors that share memory (e.g. a monitored metric)
        tensors[key] = tensor
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[k, _flatten(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise DataError(f"{where}: a {type(value).__name__} cannot be stored in a safetensors checkpoint")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        return OrderedDict((k, _unflatten(v, tensors)) for k, v in value["__dict__"])
    return value
