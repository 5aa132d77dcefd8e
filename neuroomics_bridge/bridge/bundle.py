"""The saved bridge bundle: the one folder a trained bridge travels in.

``nob demo`` (or a user) writes it; ``nob report`` and ``nob evaluate`` read it. Layout,
versioned by ``bundle.json`` (``format: neuroomics-bridge/bundle-v1``)::

    <folder>/config.json, adapters.safetensors, README.md   Bridge.save_pretrained (the adapters)
    <folder>/encoders/                                      the fitted CohortEncoder (optional)
    <folder>/references/                                    the ReferenceSet reports cite (optional)

A folder written by ``Bridge.save_pretrained`` alone (no ``bundle.json``) reads as a bundle with
neither part.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Self

from neuroomics_bridge.backbone.text import TextBackbone
from neuroomics_bridge.bridge.model import BUNDLE_MANIFEST, Bridge
from neuroomics_bridge.encoders.cohort import CohortEncoder
from neuroomics_bridge.errors import CorruptFileError, MissingFileError
from neuroomics_bridge.io import atomic_directory, read_manifest
from neuroomics_bridge.retrieval import ReferenceSet

__all__ = ["BUNDLE_FORMAT", "BridgeBundle"]

BUNDLE_FORMAT = "neuroomics-bridge/bundle-v1"
ENCODERS = "encoders"
REFERENCES = "references"


@dataclasses.dataclass
class BridgeBundle:
    """A trained bridge with what applying it to new subjects needs.

    Attributes
    ----------
    bridge
        The backbone and its trained adapters.
    encoders
        The encoders fitted on the training fold, to encode new subjects the same way.
    references
        The reference subjects (reports, labels, faiss indexes) reports may cite.
    """

    bridge: Bridge
    encoders: CohortEncoder | None = None
    references: ReferenceSet | None = None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle as one folder, atomically (all or nothing).

        Parameters
        ----------
        directory
            The bundle folder; an existing one is replaced as a whole.

        Returns
        -------
        Path
            ``directory``.
        """
        target = Path(directory)
        with atomic_directory(target, kind="bridge bundle", marker=BUNDLE_MANIFEST) as tmp:
            self.bridge.save_pretrained(tmp)
            parts = []
            if self.encoders is not None:
                self.encoders.save(tmp / ENCODERS)
                parts.append(ENCODERS)
            if self.references is not None:
                self.references.save(tmp / REFERENCES)
                parts.append(REFERENCES)
            (tmp / BUNDLE_MANIFEST).write_text(json.dumps({"format": BUNDLE_FORMAT, "parts": parts}, indent=2))
        return target

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], backbone: TextBackbone | None = None, *, need_encoders: bool = False
    ) -> Self:
        """Read a folder written by :meth:`save` (or by ``Bridge.save_pretrained`` alone).

        Parameters
        ----------
        directory
            The bundle folder.
        backbone
            The backbone to put the adapters on (default: the recorded one, see
            :meth:`Bridge.from_pretrained`).
        need_encoders
            Raise :class:`MissingFileError` when the bundle has no fitted encoders.

        Raises
        ------
        MissingFileError
            A part the manifest lists, or the encoders asked for, is missing.
        CorruptFileError
            The manifest is not a ``bundle-v1`` manifest.
        """
        folder = Path(directory)
        manifest = folder / BUNDLE_MANIFEST
        listed = read_manifest(manifest, BUNDLE_FORMAT).get("parts") if manifest.is_file() else []
        if not isinstance(listed, list) or not all(isinstance(part, str) for part in listed):
            raise CorruptFileError(f"{manifest}: expected 'parts', a list of folder names; got {listed!r}")
        for part in listed:
            if not (folder / part).is_dir():
                raise MissingFileError(f"{folder / part}: missing; {manifest} lists it")
        if need_encoders and not (folder / ENCODERS).is_dir():
            raise MissingFileError(f"{folder / ENCODERS}: missing; the fitted encoders (written by nob demo)")
        encoders = CohortEncoder.load(folder / ENCODERS) if (folder / ENCODERS).is_dir() else None
        references = ReferenceSet.load(folder / REFERENCES) if (folder / REFERENCES).is_dir() else None
        return cls(Bridge.from_pretrained(folder, backbone=backbone), encoders, references)
