"""CohortEncoder: the fitted path from a cohort's raw files to its modality vectors.

One encoder per modality (GeneEncoder reads ``genes``, BrainEncoder reads ``brains``,
PrecomputedEncoder reads its own table), each followed by covariate residualisation, all fitted
on the training subjects only. Every encoder speaks one cohort-level protocol,
``fit_cohort(cohort, subject_ids, modality=...)`` and ``transform_cohort(cohort, modality=...)
-> (n_subjects, d)``, so this pipeline never asks which kind of encoder it holds. It reads a
cohort's fields (``subject_ids``, ``genes``, ``brains``, ``covariates``) and never imports
:class:`Cohort`, which builds on it (``Cohort.encode``).

Saved as a folder, it lets new subjects (a user's own cohort, a later batch) be encoded exactly as
the bridge's training data were.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np

from neuroomics_bridge.errors import CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.io import atomic_directory, read_manifest

__all__ = ["CohortEncoder", "ENCODER_FORMAT", "default_cohort_encoder"]

ENCODER_FORMAT = "neuroomics-bridge/cohort-encoder-v1"


class CohortEncoder:
    """Fit per-modality encoders (and residualisers) on training subjects, encode any cohort.

    Parameters
    ----------
    encoders
        Modality name -> GeneEncoder, BrainEncoder or PrecomputedEncoder (anything with
        ``fit_cohort`` and ``transform_cohort``). They are fitted in place.
    residualize
        Covariate columns regressed out of every modality, fitted on the same subjects.

    Raises
    ------
    DataError
        When an encoder lacks ``fit_cohort`` or ``transform_cohort``.
    """

    def __init__(self, encoders: Mapping[str, Any], *, residualize: Sequence[str] = ()) -> None:
        for modality, encoder in encoders.items():
            if not (hasattr(encoder, "fit_cohort") and hasattr(encoder, "transform_cohort")):
                raise DataError(f"modality {modality!r}: unsupported encoder {type(encoder).__name__}")
        self.encoders = dict(encoders)
        self.residualize = list(residualize)
        self.residualizers_: dict[str, Any] = {}

    def fit(self, cohort: Any, fit_on: Any | Iterable[str] | None = None) -> Self:
        """Fit on ``fit_on``'s subjects (a cohort or subject ids; default: the whole cohort).

        Parameters
        ----------
        cohort
            The :class:`Cohort` holding the raw sources.
        fit_on
            The training fold (a cohort) or its subject ids, all of them in ``cohort``.

        Returns
        -------
        CohortEncoder
            ``self``, fitted.

        Raises
        ------
        DataError
            When ``fit_on`` names a subject the cohort lacks, or an encoder refuses the data.
        """
        from neuroomics_bridge.encoders.covariates import Residualizer

        chosen = cohort if fit_on is None else fit_on
        ids = {str(subject) for subject in getattr(chosen, "subject_ids", chosen)}
        unknown = sorted(ids - set(cohort.subject_ids))
        if unknown:  # fitting on none or some of the subjects meant would give wrong vectors, not an error
            raise DataError(
                f"fit_on: {len(unknown)} of {len(ids)} subject id(s) are not in the cohort, e.g. {unknown[:5]}; "
                f"expected ids such as {list(cohort.subject_ids[:3])}"
            )
        for modality, encoder in self.encoders.items():
            encoder.fit_cohort(cohort, ids, modality=modality)
            if self.residualize:
                matrix = encoder.transform_cohort(cohort, modality=modality)
                rows = ~np.isnan(matrix).all(axis=1) & np.isin(cohort.subject_ids, list(ids))
                table = _covariates(cohort, self.residualize)
                self.residualizers_[modality] = Residualizer(self.residualize).fit(matrix[rows], table[rows])
        return self

    def transform(self, cohort: Any) -> Any:
        """Encode ``cohort`` with the fitted encoders and residualisers.

        Returns
        -------
        Cohort
            A copy of ``cohort`` with one ``(n_subjects, d)`` matrix per modality in ``features``
            (NaN rows: modality absent).
        """
        features = dict(cohort.features)
        for modality, encoder in self.encoders.items():
            matrix = encoder.transform_cohort(cohort, modality=modality)
            if modality in self.residualizers_:
                rows = ~np.isnan(matrix).all(axis=1)
                table = _covariates(cohort, self.residualize)
                matrix[rows] = self.residualizers_[modality].transform(matrix[rows], table[rows])
            features[modality] = matrix
        return dataclasses.replace(cohort, features=features)

    def fit_transform(self, cohort: Any, fit_on: Any | Iterable[str] | None = None) -> Any:
        """:meth:`fit` then :meth:`transform` of the same cohort."""
        return self.fit(cohort, fit_on).transform(cohort)

    # ------------------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write each fitted encoder and residualiser (safetensors) plus a manifest, atomically.

        A :class:`PrecomputedEncoder` is saved as its parameters, with its source as an absolute path.

        Returns
        -------
        Path
            ``directory``.

        Raises
        ------
        DataError
            For a :class:`PrecomputedEncoder` over in-memory data.
        """
        from neuroomics_bridge.encoders import PrecomputedEncoder

        target = Path(directory)
        manifest: dict[str, Any] = {"format": ENCODER_FORMAT, "residualize": self.residualize, "modalities": {}}
        with atomic_directory(target, kind="CohortEncoder", marker="manifest.json") as tmp:
            for modality, encoder in self.encoders.items():
                entry: dict[str, Any] = {"class": type(encoder).__name__}
                if isinstance(encoder, PrecomputedEncoder):
                    if not isinstance(encoder.source, (str, os.PathLike)):
                        raise DataError(f"modality {modality!r}: in-memory precomputed data cannot be saved")
                    params = encoder.get_params()
                    ids = None if params["ids"] is None else [str(i) for i in params["ids"]]  # e.g. a numpy array
                    entry["params"] = {**params, "ids": ids, "source": str(Path(encoder.source).resolve())}
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
        """Read a folder written by :meth:`save`.

        Raises
        ------
        MissingFileError
            When the folder, its manifest or a saved estimator file is missing.
        CorruptFileError
            When the manifest or a saved estimator is damaged or of another format.
        """
        from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder, PrecomputedEncoder, Residualizer

        folder = Path(directory)
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: missing; not a saved CohortEncoder")
        file = folder / "manifest.json"
        manifest = read_manifest(file, ENCODER_FORMAT)
        classes = {"GeneEncoder": GeneEncoder, "BrainEncoder": BrainEncoder, "PrecomputedEncoder": PrecomputedEncoder}
        _check_manifest(file, manifest, classes)
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


def default_cohort_encoder(
    cohort: Any,
    *,
    gene_components: int = 32,
    gene_top_genes: int = 2000,
    brain_atlas: str = "mni-gm-64",
    brain_components: int = 32,
    residualize: Sequence[str] = ("age", "sex", "site"),
) -> CohortEncoder:
    """The library's default pipeline for a cohort (``nob demo`` and the ``nob align`` recipe).

    A :class:`GeneEncoder` where the cohort has expression data, a :class:`BrainEncoder` on the
    built-in atlas where it has images, and residualisation of the ``residualize`` covariates
    the cohort has (the field's standard before alignment). Unfitted.

    Parameters
    ----------
    cohort
        Read only for which modalities and covariate columns it has.
    gene_components, gene_top_genes
        The :class:`GeneEncoder`'s ``n_components`` and ``n_top_genes``.
    brain_atlas, brain_components
        The :class:`BrainEncoder`'s ``atlas`` and ``n_components``.
    residualize
        Covariates to regress out; those absent from the cohort are skipped.
    """
    from neuroomics_bridge.encoders.brain import BrainEncoder
    from neuroomics_bridge.encoders.gene import GeneEncoder

    encoders: dict[str, Any] = {}
    if cohort.genes is not None:
        encoders["gene"] = GeneEncoder(n_components=gene_components, n_top_genes=gene_top_genes)
    if cohort.brains is not None:
        encoders["brain"] = BrainEncoder(brain_atlas, n_components=brain_components)
    known = cohort.covariates.columns if cohort.covariates is not None else ()
    return CohortEncoder(encoders, residualize=[c for c in residualize if c in known])


def _check_manifest(file: Path, manifest: dict[str, Any], classes: Mapping[str, type]) -> None:
    """:class:`CorruptFileError` naming ``file`` and the entry where a (hand-edited) manifest
    is not of the shape :meth:`CohortEncoder.save` writes."""
    modalities, residualize = manifest.get("modalities"), manifest.get("residualize")
    if not isinstance(modalities, dict) or not isinstance(residualize, list):
        raise CorruptFileError(
            f"{file}: expected 'modalities' (an object) and 'residualize' (a list), "
            f"got {type(modalities).__name__} and {type(residualize).__name__}"
        )
    for modality, entry in modalities.items():
        kind = entry.get("class") if isinstance(entry, dict) else None
        needed = "params" if kind == "PrecomputedEncoder" else "file"
        if kind not in classes or needed not in entry:
            raise CorruptFileError(
                f"{file}: modalities[{modality!r}]: expected a 'class' in {sorted(classes)} and its "
                f"{needed!r}, got {entry!r}"
            )


def _covariates(cohort: Any, columns: Sequence[str]) -> Any:
    if cohort.covariates is None:
        raise DataError(f"residualize {list(columns)}: this cohort has no covariates table (covariates.csv)")
    missing = [c for c in columns if c not in cohort.covariates.columns]
    if missing:
        raise DataError(
            f"residualize {list(columns)}: covariates (covariates.csv) lack {missing}; "
            f"they have {list(cohort.covariates.columns)}"
        )
    return cohort.covariates[list(columns)]
