"""Cohort: the subjects of a study, their modality vectors, reports, labels and covariates.

A cohort can hold raw sources (expression AnnData with a subject column, one brain image per
subject) and the vectors encoded from them. A subject may lack a modality: its row is NaN and
``present(modality)`` is False, so nothing downstream imputes it silently. ``split`` assigns
folds by a hash of the seed and the subject id (stratified by label), so a subject's fold never
depends on who else is in the cohort. ``to_files`` / ``from_files`` move a cohort through a plain
folder of standard files (``genes.h5ad``, ``brain/<id>.nii.gz``, ``reports.csv``,
``covariates.csv``) that users can also assemble from their own data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.io import atomic_directory, read_manifest, unreadable_table

__all__ = ["Cohort", "CohortSplit", "COHORT_FORMAT"]

_PLAIN_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

COHORT_FORMAT = "neuroomics-bridge/cohort-v1"
ImageSource = str | os.PathLike[str] | Any


@dataclasses.dataclass
class CohortSplit:
    """Disjoint train / validation / test cohorts."""

    train: Cohort
    val: Cohort
    test: Cohort


@dataclasses.dataclass
class Cohort:
    """Subjects with per-modality vectors and their raw sources.

    Attributes
    ----------
    subject_ids
        Unique subject identifiers; every per-subject field follows this order.
    features
        Modality name -> ``(n_subjects, d)`` float32 matrix; NaN rows mark absent subjects.
    reports, labels
        One clinical text and one label (e.g. diagnosis) per subject, or ``None``.
    covariates
        Table indexed by subject id (age, sex, site ...), or ``None``.
    phenotypes
        Other per-subject variables kept for analysis but never regressed out (e.g. severity).
    genes
        Raw expression AnnData whose ``obs[gene_groupby]`` names each row's subject.
    brains
        One image (path or nibabel image) per subject, ``None`` where absent.
    gene_groupby
        The ``genes.obs`` column holding subject ids.

    Raises
    ------
    DataError
        On duplicated ids, per-subject fields of another length, tables not indexed by
        ``subject_ids`` in order, or ``genes`` without the ``gene_groupby`` column.
    """

    subject_ids: list[str]
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    reports: list[str] | None = None
    labels: list[str] | None = None
    covariates: pd.DataFrame | None = None
    phenotypes: pd.DataFrame | None = None
    genes: Any = None
    brains: list[ImageSource | None] | None = None
    gene_groupby: str = "subject_id"

    def __post_init__(self) -> None:
        self.subject_ids = [str(s) for s in self.subject_ids]
        n = len(self.subject_ids)
        _check_unique(self.subject_ids, "Cohort.subject_ids")
        for name, values in (("reports", self.reports), ("labels", self.labels), ("brains", self.brains)):
            if values is not None and len(values) != n:
                raise DataError(f"Cohort.{name}: expected {n} entries (one per subject), got {len(values)}")
        # The cohort holds its own copies: the caller's dict and tables are never rewritten.
        features = {}
        for modality, matrix in self.features.items():
            if not _PLAIN_STEM.fullmatch(modality):  # it names files and folders when the cohort is saved
                raise DataError(
                    f"Cohort.features: modality names are letters, digits, '.', '_' and '-', got {modality!r}"
                )
            matrix = np.array(matrix, dtype=np.float32)  # a copy, even of a float32 array
            if matrix.ndim != 2 or matrix.shape[0] != n:
                raise DataError(f"Cohort.features['{modality}']: expected shape ({n}, d), got {matrix.shape}")
            features[modality] = matrix
        self.features = features
        for name in ("covariates", "phenotypes"):
            table = getattr(self, name)
            if table is not None:
                if list(map(str, table.index)) != self.subject_ids:
                    raise DataError(f"Cohort.{name}: index must equal subject_ids (same ids, same order)")
                table = table.copy()
                table.index = pd.Index(self.subject_ids, name="subject_id")
                setattr(self, name, table)
        if self.genes is not None and self.gene_groupby not in self.genes.obs:
            raise DataError(
                f"Cohort.genes: obs['{self.gene_groupby}'] (the subject column) not found; "
                f"obs has {list(self.genes.obs.columns)}"
            )

    # ------------------------------------------------------------------------------ views
    @property
    def n_subjects(self) -> int:
        """The number of subjects."""
        return len(self.subject_ids)

    @property
    def modalities(self) -> list[str]:
        """The modalities with encoded vectors (the keys of ``features``)."""
        return list(self.features)

    def present(self, modality: str) -> np.ndarray:
        """Boolean mask of subjects that have ``modality`` (a row that is not all NaN).

        Raises
        ------
        DataError
            When the cohort has no vectors for ``modality``.
        """
        if modality not in self.features:
            raise DataError(f"modality {modality!r} not in this cohort; modalities: {self.modalities}")
        return ~np.isnan(self.features[modality]).all(axis=1)

    def subset(self, subject_ids: Sequence[str]) -> Cohort:
        """The cohort restricted to ``subject_ids``, in that order (``genes`` keeps those subjects' cells).

        Raises
        ------
        DataError
            For an id not in the cohort.
        """
        position = {s: i for i, s in enumerate(self.subject_ids)}
        unknown = [s for s in subject_ids if s not in position]
        if unknown:
            raise DataError(f"subset: unknown subject id(s) {unknown[:5]}")
        rows = [position[s] for s in subject_ids]
        genes = None
        if self.genes is not None:
            genes = self.genes[self.genes.obs[self.gene_groupby].astype(str).isin(set(subject_ids)).to_numpy()]
        return dataclasses.replace(
            self,
            subject_ids=list(subject_ids),
            features={m: x[rows] for m, x in self.features.items()},
            reports=None if self.reports is None else [self.reports[i] for i in rows],
            labels=None if self.labels is None else [self.labels[i] for i in rows],
            covariates=None if self.covariates is None else self.covariates.iloc[rows].copy(),
            phenotypes=None if self.phenotypes is None else self.phenotypes.iloc[rows].copy(),
            genes=genes,
            brains=None if self.brains is None else [self.brains[i] for i in rows],
        )

    def split(self, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), *, seed: int = 0) -> CohortSplit:
        """Deterministic train/val/test split by subject, stratified by label when there are labels.

        Within each label, subjects are ordered by a hash of ``seed`` and their id, so their order
        does not depend on who else is in the cohort (only where the cuts fall does).

        Parameters
        ----------
        fractions
            Train, validation and test shares; non-negative, summing to 1.
        seed
            Picks another assignment.

        Raises
        ------
        DataError
            For invalid ``fractions``.

        Warns
        -----
        UserWarning
            When a fold that ``fractions`` gives a subject or more comes out empty (many labels of
            a few subjects each: every label rounds its share of that fold to 0).
        """
        if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
            raise DataError(f"split fractions: expected three non-negative numbers summing to 1, got {fractions}")
        groups: dict[str, list[str]] = {}
        for i, subject in enumerate(self.subject_ids):
            groups.setdefault(self.labels[i] if self.labels is not None else "", []).append(subject)
        folds: tuple[list[str], list[str], list[str]] = ([], [], [])
        for members in groups.values():
            ordered = sorted(members, key=lambda s: _hash_unit(seed, s))
            n_train = round(len(ordered) * fractions[0])
            n_val = round(len(ordered) * (fractions[0] + fractions[1])) - n_train
            folds[0].extend(ordered[:n_train])
            folds[1].extend(ordered[n_train : n_train + n_val])
            folds[2].extend(ordered[n_train + n_val :])
        emptied = [
            name
            for name, fold, share in zip(("train", "val", "test"), folds, fractions, strict=True)
            if not fold and share * self.n_subjects >= 1
        ]
        if emptied:  # each label rounds its own cuts: many small labels can all round one fold away
            warnings.warn(
                f"split: the {' and '.join(emptied)} fold(s) came out empty although fractions {fractions} of "
                f"{self.n_subjects} subjects ask for some: the split is stratified, each of the {len(groups)} labels "
                "is cut on its own and rounds its share of that fold to 0 subjects; give that fold a larger share",
                stacklevel=2,
            )
        order = {s: i for i, s in enumerate(self.subject_ids)}
        train, val, test = (self.subset(sorted(f, key=order.__getitem__)) for f in folds)
        return CohortSplit(train=train, val=val, test=test)

    # ------------------------------------------------------------------------------ encoding
    def encode(
        self,
        encoders: Mapping[str, Any],
        *,
        fit_on: Cohort | Sequence[str] | None = None,
        residualize: Sequence[str] = (),
    ) -> Cohort:
        """Fit each modality's encoder on ``fit_on``'s subjects, encode everyone, return a new cohort.

        To keep the fitted pipeline (to encode new subjects the same way later), use
        :class:`CohortEncoder` directly.

        Parameters
        ----------
        encoders
            Modality name -> a :class:`GeneEncoder` (reads ``genes``), a :class:`BrainEncoder`
            (reads ``brains``) or a :class:`PrecomputedEncoder` (reads its own file); they are
            fitted in place.
        fit_on
            The training fold (a cohort) or its subject ids (default: the whole cohort).
        residualize
            Covariate columns regressed out of every modality, fitted on the same subjects.
        """
        from neuroomics_bridge.encoders.cohort import CohortEncoder

        return CohortEncoder(encoders, residualize=residualize).fit_transform(self, fit_on)

    def scatter(self, row_ids: Sequence[str], values: np.ndarray) -> np.ndarray:
        """Rows keyed by subject id into cohort order, NaN for subjects without a row.

        Parameters
        ----------
        row_ids
            The subject of each row of ``values``; ids not in the cohort are dropped.
        values
            ``(len(row_ids), d)``.

        Returns
        -------
        numpy.ndarray
            ``(n_subjects, d)`` float32.
        """
        matrix = np.full((self.n_subjects, values.shape[1]), np.nan, dtype=np.float32)
        position = {s: i for i, s in enumerate(self.subject_ids)}
        for subject, row in zip(row_ids, values, strict=True):
            if subject in position:
                matrix[position[subject]] = row
        return matrix

    # ------------------------------------------------------------------------------ files
    def to_files(self, directory: str | os.PathLike[str]) -> Path:
        """Write the cohort as a folder of standard files, atomically (all or nothing).

        ``cohort.json``, ``reports.csv`` (subject id, label, report), ``covariates.csv`` and
        ``phenotypes.csv``, ``genes.h5ad``, ``brain/<id>.nii.gz``, and ``features/<modality>.parquet``
        for vectors not derived from ``genes`` or ``brains``.

        Returns
        -------
        Path
            ``directory``.

        Raises
        ------
        DataError
            When ``directory`` is a file or a folder of other files (one this method wrote before
            is replaced), or a stored feature row is NaN in some columns only (nothing is written).
        """
        target = Path(directory)
        # the marker is the manifest only this method writes: a folder assembled by hand (it has
        # reports.csv) may hold the user's other files, and is refused rather than replaced
        with atomic_directory(target, kind="cohort folder", marker="cohort.json") as tmp:
            manifest: dict[str, Any] = {
                "format": COHORT_FORMAT,
                "n_subjects": self.n_subjects,
                "gene_groupby": self.gene_groupby,
            }
            table = pd.DataFrame({"subject_id": self.subject_ids})
            if self.labels is not None:
                table["label"] = self.labels
            table["report"] = self.reports if self.reports is not None else ""
            table.to_csv(tmp / "reports.csv", index=False)
            for name in ("covariates", "phenotypes"):
                frame = getattr(self, name)
                if frame is not None:
                    frame.to_csv(tmp / f"{name}.csv", index_label="subject_id")
                    # text stays text when read back: site codes "01", "02" must not become numbers
                    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
                    manifest.setdefault("text_columns", {})[name] = text
            if self.genes is not None:  # anndata would otherwise turn the caller's obs strings into categoricals
                self.genes.write_h5ad(tmp / "genes.h5ad", convert_strings_to_categoricals=False)
            if self.brains is not None:
                manifest["brain_files"] = self._write_brains(tmp / "brain")
            derived = {"gene"} if self.genes is not None else set()
            derived |= {"brain"} if self.brains is not None else set()
            stored = {m: x for m, x in self.features.items() if m not in derived}
            if stored:
                (tmp / "features").mkdir()
                for modality, matrix in stored.items():
                    missing = np.isnan(matrix)
                    partial = missing.any(axis=1) & ~missing.all(axis=1)  # all NaN: absent; some NaN: damaged
                    if partial.any():
                        damaged = [s for s, bad in zip(self.subject_ids, partial, strict=True) if bad]
                        raise DataError(
                            f"features[{modality!r}]: subject(s) {damaged[:5]} "
                            "have NaN in some columns but not all; expected a complete vector or an all-NaN "
                            "(absent) row, which reading the folder back requires"
                        )
                    frame = pd.DataFrame(matrix, columns=[f"f{i}" for i in range(matrix.shape[1])])
                    frame.insert(0, "subject_id", self.subject_ids)
                    present = ~np.isnan(matrix).all(axis=1)  # absent subjects are left out; reading gives NaN back
                    frame[present].to_parquet(tmp / "features" / f"{modality}.parquet", index=False)
            manifest["stored_features"] = sorted(stored)
            (tmp / "cohort.json").write_text(json.dumps(manifest, indent=2))
        return target

    def _write_brains(self, folder: Path) -> dict[str, str]:
        import nibabel as nib

        from neuroomics_bridge.encoders.atlases import load_image

        folder.mkdir()
        files = {}
        for index, (subject, image) in enumerate(zip(self.subject_ids, self.brains or [], strict=True)):
            if image is None:
                continue
            name = f"{_file_stem(subject, index)}.nii.gz"
            if isinstance(image, (str, os.PathLike)) and str(image).endswith(".nii.gz"):
                shutil.copyfile(image, folder / name)  # the same bytes
            else:  # an image in memory, or a file in another format (.nii, .mgz, Analyze): written as .nii.gz
                nib.save(image if not isinstance(image, (str, os.PathLike)) else load_image(image), folder / name)
            files[subject] = f"brain/{name}"
        return files

    @classmethod
    def from_files(cls, directory: str | os.PathLike[str]) -> Self:
        """Read a folder written by :meth:`to_files` (or assembled by hand in that layout).

        Brain images stay as paths and are read by the encoder; stored features are loaded.
        Encode the raw modalities with :meth:`encode` after choosing the training fold.

        Raises
        ------
        MissingFileError
            When the folder or its ``reports.csv`` is missing.
        DataError
            When ``cohort.json`` is invalid, or ``reports.csv`` or a covariate table lacks its
            columns or lists other subjects, or a subject's label is empty.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: no such cohort folder")
        manifest = _read_manifest(folder)
        reports_file = folder / "reports.csv"
        if not reports_file.is_file():
            raise MissingFileError(f"{reports_file}: missing; a cohort folder needs reports.csv (subject_id, report)")
        table = _read_csv(reports_file, keep_default_na=False)
        if "subject_id" not in table.columns or "report" not in table.columns:
            raise DataError(
                f"{reports_file}: expected columns subject_id, report (and label); got {list(table.columns)}"
            )
        subject_ids = table["subject_id"].tolist()
        _check_unique(subject_ids, reports_file)
        if "label" in table.columns:
            table["label"] = table["label"].astype(str).str.strip()
            blank = [s for s, label in zip(subject_ids, table["label"], strict=True) if not label]
            if blank:
                raise DataError(
                    f"{reports_file}: empty label for subject(s) {blank[:5]}; label every subject or drop the column"
                )
        text_columns = manifest.get("text_columns", {})
        tables = {
            name: _read_table(folder / f"{name}.csv", subject_ids, text_columns.get(name, []))
            for name in ("covariates", "phenotypes")
        }
        genes = None
        groupby = manifest.get("gene_groupby", "subject_id")
        if (folder / "genes.h5ad").is_file():
            import anndata as ad

            genes = ad.read_h5ad(folder / "genes.h5ad")
            if groupby not in genes.obs:
                raise DataError(
                    f"{folder / 'genes.h5ad'}: expected obs['{groupby}'] (each cell's subject id); "
                    f"obs has {list(genes.obs.columns)}"
                )
        brain_files = manifest.get("brain_files")
        if brain_files is not None and not (
            isinstance(brain_files, dict) and all(isinstance(v, str) for v in brain_files.values())
        ):
            raise DataError(
                f"{folder / 'cohort.json'}: expected brain_files to map subject ids to file paths, "
                f"got {type(brain_files).__name__}"
            )
        if brain_files is None and (folder / "brain").is_dir():
            brain_files = {p.name.split(".nii")[0]: f"brain/{p.name}" for p in (folder / "brain").glob("*.nii*")}
        brains = (
            None
            if brain_files is None
            else [str(folder / brain_files[s]) if s in brain_files else None for s in subject_ids]
        )
        features = {}
        for modality in manifest.get("stored_features", []):
            from neuroomics_bridge.encoders.precomputed import PrecomputedEncoder

            features[modality] = (
                PrecomputedEncoder(folder / "features" / f"{modality}.parquet", missing="nan")
                .fit()
                .transform(subject_ids)
            )
        return cls(
            subject_ids=subject_ids,
            features=features,
            reports=table["report"].tolist(),
            labels=table["label"].tolist() if "label" in table.columns else None,
            covariates=tables["covariates"],
            phenotypes=tables["phenotypes"],
            genes=genes,
            brains=brains,
            gene_groupby=groupby,
        )


def _check_unique(subject_ids: list[str], where: str | Path) -> None:
    """:class:`DataError` naming ``where`` (a file, a field) and the ids it lists more than once."""
    index = pd.Index(subject_ids)
    if index.has_duplicates:
        raise DataError(f"{where}: duplicated id(s) {list(index[index.duplicated()].unique()[:10])}")


def _hash_unit(seed: int, subject: str) -> float:
    digest = hashlib.sha256(f"{seed}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _read_manifest(folder: Path) -> dict[str, Any]:
    """``cohort.json`` if the folder has one (a folder assembled by hand may not)."""
    file = folder / "cohort.json"
    return read_manifest(file, COHORT_FORMAT, error=DataError) if file.is_file() else {}


def _read_csv(file: Path, text_columns: Sequence[str] = (), **options: Any) -> pd.DataFrame:
    """A cohort table with its ``subject_id`` column (and ``text_columns``) as text;
    :class:`DataError` naming the file when it is empty, ragged or not UTF-8 text."""
    try:
        table = pd.read_csv(file, dtype=dict.fromkeys(["subject_id", *text_columns], str), **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise unreadable_table(file, err) from None
    if not isinstance(table.index, pd.RangeIndex):  # pandas makes a first row's extra fields the index
        raise unreadable_table(file, f"rows with more fields than the header's {table.shape[1]}")
    return table


def _read_table(file: Path, subject_ids: list[str], text_columns: Sequence[str] = ()) -> pd.DataFrame | None:
    if not file.is_file():
        return None
    table = _read_csv(file, text_columns)
    if "subject_id" not in table.columns:
        raise DataError(f"{file}: expected a subject_id column; got {list(table.columns)}")
    _check_unique(table["subject_id"].tolist(), file)
    table = table.set_index("subject_id")
    unknown = sorted(set(table.index) - set(subject_ids))
    missing = [s for s in subject_ids if s not in table.index]
    if unknown or missing:
        raise DataError(f"{file}: subject ids differ from reports.csv (missing {missing[:5]}, unknown {unknown[:5]})")
    return table.loc[subject_ids]


def _file_stem(subject: str, index: int) -> str:
    """A file name for ``subject``'s image: the id itself where it is a plain name, else ``_``,
    the subject's position and the id with every other character replaced. An id such as
    ``"../x"`` or ``"site/1"`` must not name a path outside the folder or a missing sub-folder;
    the manifest maps ids to files, so the name need not be the id, and the leading ``_``, which
    no plain name has, keeps the two kinds from colliding."""
    if _PLAIN_STEM.fullmatch(subject):
        return subject
    return f"_{index}_" + re.sub(r"[^A-Za-z0-9._-]", "_", subject)
