"""BrainEncoder: NIfTI images in, one vector per image out.

Each image is parcellated with an atlas in one sparse pass over its labelled voxels (no loop
over regions): regional means of a 3D map, or, for a 4D fMRI series read a chunk of volumes at a
time, the Fisher-z correlation matrix of the regional time series (upper triangle). Features
are z-scored and optionally reduced by PCA, both fitted on the training fold only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Sequence
from typing import Any, Literal, Self

import numpy as np
from sklearn.base import TransformerMixin

from neuroomics_bridge.encoders.atlases import Atlas, load_image
from neuroomics_bridge.encoders.base import PersistentEstimator, cohort_images
from neuroomics_bridge.errors import CorruptFileError, DataError
from neuroomics_bridge.progress import progress

__all__ = ["BrainEncoder", "BrainFeature"]

BrainFeature = Literal["mean", "connectivity"]
ImageLike = str | os.PathLike[str] | Any


class BrainEncoder(PersistentEstimator, TransformerMixin):
    """Brain images to vectors through an atlas, fitted on a training fold.

    Parameters
    ----------
    atlas
        A built-in spec (``"mni-gm-64"``, ``"power2011"`` ...; see ``BUILTIN_ATLASES``), a labels
        image path, a nibabel labels image, or an :class:`Atlas` (for label names).
    features
        ``("mean",)`` regional means of 3D maps; ``("connectivity",)`` Fisher-z correlations of
        regional time series of 4D images; both together for 4D images (time-averaged means too).
    n_components
        PCA dimensions after z-scoring; ``None`` keeps the z-scored features.
    chunk_volumes
        Volumes of a 4D image read at once (bounds memory for long series).
    """

    _fitted_arrays = ("feature_mean_", "feature_std_", "components_", "pca_mean_", "atlas_labels_", "atlas_affine_")
    _fitted_values = ("feature_names_", "region_names_")

    def _fitted_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """One value per atlas feature; the components span them; a 4 x 4 affine."""
        features = len(self.feature_names_)
        return {
            "feature_mean_": (features,),
            "feature_std_": (features,),
            "pca_mean_": (features,),
            "components_": (None, features),
            "atlas_affine_": (4, 4),
        }

    def __init__(
        self,
        atlas: Atlas | ImageLike = "mni-gm-64",
        *,
        features: Sequence[BrainFeature] = ("mean",),
        n_components: int | None = None,
        chunk_volumes: int = 32,
    ) -> None:
        self.atlas = atlas
        self.features = features
        self.n_components = n_components
        self.chunk_volumes = chunk_volumes

    # ------------------------------------------------------------------------------ public API

    # ------------------------------------------------------------------------------ cohort protocol
    def fit_cohort(self, cohort: Any, subject_ids: Collection[str], *, modality: str = "brain") -> Self:
        """Fit on the images of ``subject_ids`` in ``cohort.brains``."""
        chosen = set(subject_ids)
        return self.fit([image for subject, image in cohort_images(cohort, modality) if subject in chosen])

    def transform_cohort(self, cohort: Any, *, modality: str = "brain") -> np.ndarray:
        """``(n_subjects, n_components)`` in cohort order; NaN rows for subjects without an image."""
        pairs = cohort_images(cohort, modality)
        if not pairs:
            return np.full((cohort.n_subjects, len(self.components_)), np.nan, dtype=np.float32)
        return cohort.scatter([s for s, _ in pairs], self.transform([image for _, image in pairs]))

    def fit(self, images: Sequence[ImageLike], y: Any = None) -> Self:
        """Learn feature scaling (and PCA) from the training images.

        Parameters
        ----------
        images
            One NIfTI path or nibabel image per training subject.
        y
            Unused (scikit-learn protocol).
        """
        from sklearn.decomposition import PCA

        atlas = Atlas.resolve(self.atlas)  # as set now, not a previous fit's stored atlas
        raw = self._extract(images, atlas)
        self.feature_mean_ = raw.mean(axis=0)
        std = raw.std(axis=0)
        self.feature_std_ = np.where(std > 0, std, 1.0)
        scaled = (raw - self.feature_mean_) / self.feature_std_
        if self.n_components is None:
            self.components_ = np.eye(raw.shape[1])
            self.pca_mean_ = np.zeros(raw.shape[1])
        else:
            n_components = min(self.n_components, *scaled.shape)
            pca = PCA(n_components=n_components, svd_solver="full").fit(scaled)
            self.components_, self.pca_mean_ = pca.components_, pca.mean_
        self.feature_names_ = self._feature_names(atlas)
        self.region_names_ = list(atlas.names)
        self.atlas_labels_, self.atlas_affine_ = atlas.labels, atlas.affine
        return self

    def transform(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Parcellate ``images`` and apply the fitted scaling and PCA.

        Returns
        -------
        numpy.ndarray
            ``(n_images, n_components or n_features)`` float32.
        """
        self._check_fitted()
        scaled = (self.extract(images) - self.feature_mean_) / self.feature_std_
        return ((scaled - self.pca_mean_) @ self.components_.T).astype(np.float32)

    def fit_transform(self, images: Sequence[ImageLike], y: Any = None, **kwargs: Any) -> np.ndarray:
        """Fit on ``images`` and return their vectors (:meth:`fit`, then :meth:`transform`)."""
        return self.fit(images).transform(images)

    def extract(self, images: Sequence[ImageLike], *, show_progress: bool | None = None) -> np.ndarray:
        """Unscaled atlas features of each image (no fitting needed).

        Images off the atlas grid are resampled to it with a warning.

        Returns
        -------
        numpy.ndarray
            ``(n_images, n_features)`` float64: regional means, then the connectivity upper
            triangle, as ``features`` asks.

        Raises
        ------
        DataError
            On invalid ``features``, a single image instead of a sequence, no images, an image of
            the wrong dimensionality for ``features``, no overlap with the atlas, an atlas region
            without finite voxels, or fewer than 3 volumes for connectivity.
        CorruptFileError
            When image data cannot be read.
        """
        return self._extract(images, self._resolved_atlas(), show_progress)

    def _extract(self, images: Sequence[ImageLike], atlas: Atlas, show_progress: bool | None = None) -> np.ndarray:
        self._check_features()
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "dataobj"):
            raise DataError("expected a sequence of images (one per subject), got a single image")
        rows = [self._features_of(image, atlas) for image in progress(images, desc="parcellate", show=show_progress)]
        if not rows:
            raise DataError("no images given")
        return np.stack(rows)

    # ------------------------------------------------------------------------------ internals
    def _check_features(self) -> None:
        chosen = tuple(self.features)
        if not chosen or any(f not in ("mean", "connectivity") for f in chosen) or len(set(chosen)) != len(chosen):
            raise DataError(f"BrainEncoder.features: expected 'mean' and/or 'connectivity', got {chosen}")

    def _resolved_atlas(self) -> Atlas:
        """The fitted atlas (stored with the encoder, so a loaded one needs no atlas file), else ``atlas``."""
        if hasattr(self, "atlas_labels_") and not isinstance(self.atlas, Atlas):
            return Atlas(self.atlas_labels_, self.atlas_affine_, tuple(self.region_names_), str(self.atlas))
        return Atlas.resolve(self.atlas)

    def _feature_names(self, atlas: Atlas) -> list[str]:
        names: list[str] = []
        if "mean" in self.features:
            names += list(atlas.names)
        if "connectivity" in self.features:
            upper = np.triu_indices(atlas.n_regions, k=1)
            names += [f"{atlas.names[i]}~{atlas.names[j]}" for i, j in zip(*upper, strict=True)]
        return names

    def _features_of(self, image: ImageLike, atlas: Atlas) -> np.ndarray:
        img = load_image(image)
        name = _name(image)
        if img.ndim not in (3, 4):
            raise DataError(f"{name}: expected a 3D or 4D image, got {img.ndim}D shape {img.shape}")
        series = img.ndim == 4 and img.shape[3] > 1
        if "connectivity" in self.features and not series:
            raise DataError(f"{name}: 'connectivity' needs a 4D time series, got shape {img.shape}")
        if tuple(self.features) == ("mean",) and series:
            raise DataError(
                f"{name}: expected a 3D image, got 4D shape {img.shape} ({img.shape[3]} volumes); "
                "use features=('connectivity',) for fMRI time series"
            )
        img = _on_atlas_grid(img, atlas, name)
        signals = _regional_means(img, atlas, name, self.chunk_volumes)  # (T, R)
        parts = []
        if "mean" in self.features:
            parts.append(signals.mean(axis=0))
        if "connectivity" in self.features:
            parts.append(_fisher_z_upper(signals, atlas, name))
        return np.concatenate(parts)

    def _params_to_json(self) -> dict[str, Any]:
        params = self.get_params(deep=False)
        params["atlas"] = self.atlas if isinstance(self.atlas, str) else _name(self.atlas)
        return params


def _name(image: ImageLike) -> str:
    if isinstance(image, Atlas):
        return image.name
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return getattr(image, "get_filename", lambda: None)() or "<in-memory image>"


def _on_atlas_grid(img: Any, atlas: Atlas, name: str) -> Any:
    """The image itself when it shares the atlas grid; else resampled to it, with a warning."""
    from nibabel.affines import apply_affine

    if img.shape[:3] == atlas.shape and np.allclose(img.affine, atlas.affine, atol=1e-4):
        return img
    # Where do the atlas's labelled voxels fall in the image? None inside: no overlap at all.
    ijk = np.column_stack(np.unravel_index(atlas.voxel_index, atlas.shape))
    inside_ijk = apply_affine(np.linalg.inv(img.affine) @ atlas.affine, ijk)
    inside = np.all((inside_ijk > -0.5) & (inside_ijk < np.asarray(img.shape[:3]) - 0.5), axis=1)
    if not inside.any():
        raise DataError(
            f"{name}: the image does not overlap the atlas {atlas.name} (no labelled voxel in its field of view)"
        )
    from nilearn.image import resample_to_img

    warnings.warn(
        f"{name}: grid {img.shape[:3]} differs from the atlas {atlas.name} grid {atlas.shape}; resampled to the "
        f"atlas (continuous interpolation), covering {inside.mean():.0%} of its labelled voxels",
        stacklevel=4,
    )
    import nibabel as nib

    floating = nib.Nifti1Image(_read(img, name).astype(np.float32), img.affine)
    return resample_to_img(
        floating, atlas.image, interpolation="continuous", fill_value=np.nan, force_resample=True, copy_header=True
    )


def _read(img: Any, name: str, volumes: slice | None = None) -> np.ndarray:
    try:
        return np.asarray(img.dataobj if volumes is None else img.dataobj[..., volumes], dtype=np.float32)
    except Exception as err:  # zlib/EOF/OSError from truncated or damaged data
        raise CorruptFileError(f"{name}: image data cannot be read ({type(err).__name__}: {err})") from None


def _regional_means(img: Any, atlas: Atlas, name: str, chunk_volumes: int) -> np.ndarray:
    """``(n_volumes, n_regions)`` regional means over finite voxels, one sparse product per chunk."""
    n_volumes = img.shape[3] if img.ndim == 4 else 1
    blocks = []
    for start in range(0, n_volumes, max(chunk_volumes, 1)):
        volumes = slice(start, min(start + chunk_volumes, n_volumes)) if img.ndim == 4 else None
        data = _read(img, name, volumes).reshape(int(np.prod(atlas.shape)), -1)[atlas.voxel_index]
        finite = np.isfinite(data)
        if finite.all():
            sums, counts = atlas.indicator @ data, np.asarray(atlas.indicator.sum(axis=1))
        else:
            sums, counts = atlas.indicator @ np.where(finite, data, 0.0), atlas.indicator @ finite.astype(np.float64)
        if np.any(counts == 0):
            empty = np.flatnonzero(np.asarray(counts).min(axis=1) == 0)
            raise DataError(
                f"{name}: {len(empty)} atlas region(s) have no finite voxel in the image, e.g. "
                f"{[atlas.names[i] for i in empty[:5]]}"
            )
        blocks.append((sums / counts).T)
    return np.concatenate(blocks)


def _fisher_z_upper(signals: np.ndarray, atlas: Atlas, name: str) -> np.ndarray:
    """Upper triangle of the Fisher-z correlation matrix of ``(T, R)`` regional signals."""
    if signals.shape[0] < 3:
        raise DataError(f"{name}: connectivity needs at least 3 volumes, got {signals.shape[0]}")
    flat = signals.std(axis=0) == 0
    if flat.any():
        warnings.warn(
            f"{name}: {int(flat.sum())} region(s) have a constant signal (e.g. {atlas.names[int(np.argmax(flat))]}); "
            "their correlations are set to 0",
            stacklevel=4,
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.corrcoef(signals, rowvar=False)
    correlation = np.nan_to_num(correlation, nan=0.0)
    upper = np.triu_indices(atlas.n_regions, k=1)
    return np.arctanh(np.clip(correlation[upper], -0.999999, 0.999999))
