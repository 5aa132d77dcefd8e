"""CohortEncoder: the fitted path from a cohort's raw files to its modality vectors.

One encoder per modality (GeneEncoder reads ``genes``, BrainEncoder reads ``brains``,
PrecomputedEncoder reads its own table), each followed by covariate residualisation, all fitted
on the training subjects only. Saved as a folder, it lets new subjects (a user's own cohort, a
later batch) be encoded exactly as the bridge's training data were.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from neuroomics_bridge.data.cohort import Cohort
from neuroomics_bridge.errors import CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.io import atomic_directory

__all__ = ["CohortEncoder", "ENCODER_FORMAT"]

ENCODER_FORMAT = "neuroomics-bridge/cohort-encoder-v1"


class CohortEncoder:
    """Fit per-modality encoders (and residualisers) on training subjects, encode any cohort.

    Parameters
    ----------
    encoders
        Modality name -> GeneEncoder, BrainEncoder or PrecomputedEncoder. They are fitted in place.
    residualize
        Covariate columns regressed out of every modality, fitted on the same subjects.
    """

    def __init__(self, encoders: Mapping[str, Any], *, residualize: Sequence[str] = ()) -> None:
        self.encoders = dict(encoders)
        self.residualize = list(residualize)
        self.residualizers_: dict[str, Any] = {}

    def fit(self, cohort: Cohort, fit_on: Cohort | Iterable[str] | None = None) -> Self:
        """Fit on ``fit_on``'s subjects (default: the whole cohort)."""
        from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder, PrecomputedEncoder, Residualizer

        chosen = cohort if fit_on is None else fit_on
        ids = set(chosen.subject_ids if isinstance(chosen, Cohort) else chosen)
        for modality, encoder in self.encoders.items():
            if isinstance(encoder, GeneEncoder):
                genes = _genes(cohort, modality)
                encoder.set_params(groupby=cohort.gene_groupby)
                encoder.fit(genes[genes.obs[cohort.gene_groupby].astype(str).isin(ids).to_numpy()])
            elif isinstance(encoder, BrainEncoder):
                encoder.fit([image for subject, image in _images(cohort, modality) if subject in ids])
            elif isinstance(encoder, PrecomputedEncoder):
                encoder.set_params(missing="nan").fit()
            else:
                raise DataError(f"modality {modality!r}: unsupported encoder {type(encoder).__name__}")
            if self.residualize:
                matrix = self._encoded(cohort, modality)
                rows = ~np.isnan(matrix).all(axis=1) & np.isin(cohort.subject_ids, list(ids))
                table = _covariates(cohort, self.residualize)
                self.residualizers_[modality] = Residualizer(self.residualize).fit(matrix[rows], table[rows])
        return self

    def transform(self, cohort: Cohort) -> Cohort:
        """A copy of ``cohort`` with one ``(n_subjects, d)`` matrix per modality (NaN rows: absent)."""
        import dataclasses

        features = dict(cohort.features)
        for modality in self.encoders:
            matrix = self._encoded(cohort, modality)
            if modality in self.residualizers_:
                rows = ~np.isnan(matrix).all(axis=1)
                table = _covariates(cohort, self.residualize)
                matrix[rows] = self.residualizers_[modality].transform(matrix[rows], table[rows])
            features[modality] = matrix
        return dataclasses.replace(cohort, features=features)

    def fit_transform(self, cohort: Cohort, fit_on: Cohort | Iterable[str] | None = None) -> Cohort:
        return self.fit(cohort, fit_on).transform(cohort)

    def _encoded(self, cohort: Cohort, modality: str) -> np.ndarray:
        from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder

        encoder = self.encoders[modality]
        if isinstance(encoder, GeneEncoder):
            genes = _genes(cohort, modality)
            return cohort.scatter(encoder.row_ids(genes), encoder.transform(genes))
        if isinstance(encoder, BrainEncoder):
            pairs = _images(cohort, modality)
            if not pairs:
                return np.full((cohort.n_subjects, len(encoder.components_)), np.nan, dtype=np.float32)
            return cohort.scatter([s for s, _ in pairs], encoder.transform([image for _, image in pairs]))
        return encoder.transform(cohort.subject_ids)

    # ------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write each fitted encoder and residualiser (safetensors) plus a manifest, atomically."""
        from neuroomics_bridge.encoders import PrecomputedEncoder

        target = Path(directory)
        manifest: dict[str, Any] = {"format": ENCODER_FORMAT, "residualize": self.residualize, "modalities": {}}
        with atomic_directory(target) as tmp:
            for modality, encoder in self.encoders.items():
                entry: dict[str, Any] = {"class": type(encoder).__name__}
                if isinstance(encoder, PrecomputedEncoder):
                    if not isinstance(encoder.source, (str, os.PathLike)):
                        raise DataError(f"modality {modality!r}: in-memory precomputed data cannot be saved")
                    entry["params"] = {**encoder.get_params(), "source": str(Path(encoder.source).resolve())}
                else:
                    entry["file"] = f"{modality}.safetensors"
                    encoder.save(tmp / entry["file"])
                if modality in self.residualizers_:
                    entry["residualizer"] = f"{modality}.residualizer.safetensors"
                    self.residualizers_[modality].save(tmp / entry["residualizer"])
                manifest["modalities"][modality] = entry
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        """Read a folder written by :meth:`save`."""
        from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder, PrecomputedEncoder, Residualizer

        folder = Path(directory)
        manifest_file = folder / "manifest.json"
        if not manifest_file.is_file():
            raise MissingFileError(f"{manifest_file}: missing; {folder} is not a saved CohortEncoder")
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as err:
            raise CorruptFileError(f"{manifest_file}: not valid JSON ({err})") from None
        if manifest.get("format") != ENCODER_FORMAT:
            raise CorruptFileError(f"{manifest_file}: expected {ENCODER_FORMAT!r}, got {manifest.get('format')!r}")
        classes = {"GeneEncoder": GeneEncoder, "BrainEncoder": BrainEncoder}
        encoders: dict[str, Any] = {}
        residualizers = {}
        for modality, entry in manifest["modalities"].items():
            if entry["class"] == "PrecomputedEncoder":
                encoders[modality] = PrecomputedEncoder(**entry["params"])
            else:
                encoders[modality] = classes[entry["class"]].load(folder / entry["file"])
            if "residualizer" in entry:
                residualizers[modality] = Residualizer.load(folder / entry["residualizer"])
        loaded = cls(encoders, residualize=manifest["residualize"])
        loaded.residualizers_ = residualizers
        return loaded


def _genes(cohort: Cohort, modality: str) -> Any:
    if cohort.genes is None:
        raise DataError(f"modality {modality!r}: this cohort has no expression data (genes.h5ad)")
    return cohort.genes


def _images(cohort: Cohort, modality: str) -> list[tuple[str, Any]]:
    if cohort.brains is None:
        raise DataError(f"modality {modality!r}: this cohort has no brain images (brain/<subject>.nii.gz)")
    return [(s, image) for s, image in zip(cohort.subject_ids, cohort.brains, strict=True) if image is not None]


def _covariates(cohort: Cohort, columns: Sequence[str]) -> Any:
    if cohort.covariates is None:
        raise DataError(f"residualize {list(columns)}: this cohort has no covariates table (covariates.csv)")
    return cohort.covariates[list(columns)]
