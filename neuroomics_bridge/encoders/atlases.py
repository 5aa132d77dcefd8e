"""Brain atlases: any labels image, plus built-in ones that work offline.

No nilearn image atlas can be fetched without a network, so the built-ins are derived from data
nilearn ships: a deterministic parcellation of the MNI152 grey-matter mask (``mni-gm-<n>``),
and spheres around the published coordinates of Power 2011 (264 ROIs), Dosenbach 2010 (160) and
Seitzman 2018 (300).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from neuroomics_bridge.errors import ConfigError, DataError

__all__ = ["Atlas", "BUILTIN_ATLASES", "load_image"]

BUILTIN_ATLASES = {
    "mni-gm-<n>[-<r>mm]": "k-d split of the MNI152 grey-matter mask into n (even) regions, r mm grid (default 4)",
    "power2011[-<r>mm]": "264 spheres of 5 mm around the Power et al. 2011 coordinates, r mm grid (default 2)",
    "dosenbach2010[-<r>mm]": "160 spheres of 5 mm around the Dosenbach et al. 2010 coordinates",
    "seitzman2018[-<r>mm]": "300 spheres (published radii) around the Seitzman et al. 2018 coordinates",
}
_KD = re.compile(r"^mni-gm-(\d+)(?:-(\d)mm)?$")
_SPHERES = re.compile(r"^(power2011|dosenbach2010|seitzman2018)(?:-(\d)mm)?$")


@dataclasses.dataclass(frozen=True, eq=False)
class Atlas:
    """A 3D labels image (0 = background, 1..R = regions) with one name per region.

    Parameters
    ----------
    labels
        The 3D integer labels image.
    affine
        Its voxel-to-world affine.
    names
        One name per region, in ascending label order.
    name
        The atlas's own name (a built-in spec or the image's file name).

    Raises
    ------
    DataError
        When ``labels`` is not 3D or ``names`` does not match the number of regions.
    """

    labels: np.ndarray
    affine: np.ndarray
    names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.labels.ndim != 3:
            raise DataError(f"atlas {self.name}: expected a 3D labels image, got shape {self.labels.shape}")
        if len(self.names) != self.n_regions:
            raise DataError(f"atlas {self.name}: {self.n_regions} regions but {len(self.names)} names")

    @property
    def region_values(self) -> np.ndarray:
        """The label values of the regions, ascending (background excluded)."""
        return _region_values(self.labels)

    @property
    def n_regions(self) -> int:
        """The number of distinct non-zero labels."""
        return len(self.region_values)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid of the labels image."""
        return tuple(self.labels.shape)  # type: ignore[return-value]

    @property
    def image(self) -> Any:
        """The labels as a ``nibabel.Nifti1Image`` (int32), e.g. to resample other images onto."""
        import nibabel as nib

        return nib.Nifti1Image(self.labels.astype(np.int32), self.affine)

    @functools.cached_property
    def voxel_index(self) -> np.ndarray:
        """Flat (C-order) indices of the labelled voxels."""
        return np.flatnonzero(self.labels.ravel() > 0)

    @functools.cached_property
    def indicator(self) -> sp.csr_matrix:
        """Sparse ``(n_regions, n_labelled_voxels)`` 0/1 matrix: region membership of each voxel."""
        values = self.labels.ravel()[self.voxel_index]
        rows = np.searchsorted(self.region_values, values)
        return sp.csr_matrix(
            (np.ones(len(values)), (rows, np.arange(len(values)))), shape=(self.n_regions, len(values))
        )

    @classmethod
    def from_image(cls, image: Any, names: list[str] | None = None, *, name: str | None = None) -> Atlas:
        """An atlas from a user labels image.

        Parameters
        ----------
        image
            A NIfTI path or a nibabel image of non-negative integer labels (3D, or 4D with one volume).
        names
            One per region, in ascending label order (default: ``region_<value>``).
        name
            The atlas's name (default: the file name).

        Raises
        ------
        DataError
            When the labels are not non-negative integers, or as :func:`load_image` and the
            constructor raise.
        """
        img = load_image(image)
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)) or data.min() < 0:
            raise DataError(f"atlas {_describe(image)}: labels must be non-negative integers")
        labels = data.astype(np.int32)
        values = _region_values(labels)
        region_names = tuple(names) if names is not None else tuple(f"region_{v}" for v in values)
        return cls(
            labels=labels, affine=np.asarray(img.affine, float), names=region_names, name=name or _describe(image)
        )

    @classmethod
    def builtin(cls, spec: str) -> Atlas:
        """One of :data:`BUILTIN_ATLASES`, e.g. ``"mni-gm-64"`` or ``"power2011"``, built offline and cached.

        Raises
        ------
        ConfigError
            For an unknown spec, or an odd or too small region count for ``mni-gm-<n>``.
        """
        return _builtin(spec)

    @classmethod
    def resolve(cls, atlas: Atlas | str | os.PathLike[str] | Any) -> Atlas:
        """Turn an :class:`Atlas`, a built-in spec, a labels-image path or a nibabel image into an atlas.

        Raises
        ------
        ConfigError
            For a string or path that is neither an existing file nor a built-in spec.
        """
        if isinstance(atlas, Atlas):
            return atlas
        if isinstance(atlas, str) and (_KD.match(atlas) or _SPHERES.match(atlas)):
            return _builtin(atlas)
        if isinstance(atlas, (str, os.PathLike)) and not Path(atlas).exists():
            raise ConfigError(
                f"atlas {str(atlas)!r}: not a file and not a built-in atlas; built-ins: {list(BUILTIN_ATLASES)}"
            )
        return cls.from_image(atlas)


def _region_values(labels: np.ndarray) -> np.ndarray:
    values = np.unique(labels)
    return values[values > 0]


def _describe(image: Any) -> str:
    return (
        str(image)
        if isinstance(image, (str, os.PathLike))
        else getattr(image, "get_filename", lambda: None)() or "<image>"
    )


def load_image(image: Any) -> Any:
    """A nibabel image from a path or an image; unreadable files raise errors naming them.

    Raises
    ------
    DataError
        When ``image`` is neither a path nor an object with ``dataobj`` and ``affine``.
    MissingFileError
        When the path does not exist.
    CorruptFileError
        When nibabel cannot read the file.
    """
    import nibabel as nib

    from neuroomics_bridge.errors import CorruptFileError, MissingFileError

    if not isinstance(image, (str, os.PathLike)):
        if not hasattr(image, "dataobj") or not hasattr(image, "affine"):
            raise DataError(f"expected a NIfTI path or a nibabel image, got {type(image).__name__}")
        return image
    path = Path(image)
    if not path.exists():
        raise MissingFileError(f"{path}: no such image file")
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises many types for damaged headers
        raise CorruptFileError(f"{path}: not a readable NIfTI image ({type(err).__name__}: {err})") from None


@functools.cache
def _builtin(spec: str) -> Atlas:
    kd = _KD.match(spec)
    if kd:
        n_regions, resolution = int(kd.group(1)), int(kd.group(2) or 4)
        return _kd_atlas(spec, n_regions, resolution)
    spheres = _SPHERES.match(spec)
    if spheres:
        return _sphere_atlas(spec, spheres.group(1), int(spheres.group(2) or 2))
    raise ConfigError(f"unknown built-in atlas {spec!r}; built-ins: {list(BUILTIN_ATLASES)}")


def _kd_atlas(spec: str, n_regions: int, resolution: int) -> Atlas:
    """Split each hemisphere's grey-matter voxels recursively at the median of the longest axis.

    Equal-sized, spatially compact parcels, identical on every machine (stable sorts only).
    """
    from nibabel.affines import apply_affine
    from nilearn.datasets import load_mni152_gm_mask

    if n_regions < 2 or n_regions % 2:
        raise ConfigError(f"atlas {spec!r}: the number of regions must be even and >= 2, got {n_regions}")
    mask = load_mni152_gm_mask(resolution=resolution)
    ijk = np.argwhere(np.asanyarray(mask.dataobj) > 0)
    xyz = apply_affine(mask.affine, ijk)
    labels = np.zeros(mask.shape, dtype=np.int32)
    names: list[str] = []
    for hemisphere, side in (("L", xyz[:, 0] < 0), ("R", xyz[:, 0] >= 0)):
        for members in _kd_split(np.flatnonzero(side), xyz, n_regions // 2):
            labels[tuple(ijk[members].T)] = len(names) + 1
            cx, cy, cz = xyz[members].mean(axis=0)
            names.append(f"{hemisphere}{len(names) % (n_regions // 2) + 1:02d} ({cx:+.0f},{cy:+.0f},{cz:+.0f})")
    return Atlas(labels=labels, affine=np.asarray(mask.affine, float), names=tuple(names), name=spec)


def _kd_split(members: np.ndarray, xyz: np.ndarray, n_parts: int) -> list[np.ndarray]:
    if n_parts == 1:
        return [members]
    points = xyz[members]
    axis = int(np.argmax(np.ptp(points, axis=0)))
    ordered = members[np.argsort(points[:, axis], kind="stable")]
    first = n_parts // 2
    cut = round(len(ordered) * first / n_parts)
    return _kd_split(ordered[:cut], xyz, first) + _kd_split(ordered[cut:], xyz, n_parts - first)


def _sphere_atlas(spec: str, source: str, resolution: int) -> Atlas:
    """Label each voxel of the MNI152 grid within a sphere's radius with its nearest sphere."""
    from nibabel.affines import apply_affine
    from nilearn import datasets
    from scipy.spatial import cKDTree

    if source == "power2011":
        table = datasets.fetch_coords_power_2011().rois
        names = [f"power{int(roi):03d}" for roi in table["roi"]]
        radii = np.full(len(table), 5.0)
    elif source == "dosenbach2010":
        bunch = datasets.fetch_coords_dosenbach_2010()
        table, names, radii = bunch.rois, [str(label) for label in bunch.labels], np.full(len(bunch.rois), 5.0)
    else:
        bunch = datasets.fetch_coords_seitzman_2018()
        table, radii = bunch.rois, np.asarray(bunch.radius, float)
        names = [f"seitzman{i + 1:03d} {network}" for i, network in enumerate(bunch.networks)]
    centres = table[["x", "y", "z"]].to_numpy(float)
    template = datasets.load_mni152_brain_mask(resolution=resolution)
    ijk = np.indices(template.shape).reshape(3, -1).T
    distance, nearest = cKDTree(centres).query(apply_affine(template.affine, ijk), distance_upper_bound=radii.max())
    inside = np.isfinite(distance) & (distance <= radii[np.minimum(nearest, len(radii) - 1)])
    labels = np.zeros(template.shape, dtype=np.int32)
    labels[tuple(ijk[inside].T)] = nearest[inside] + 1
    present = set(np.unique(labels[labels > 0]))
    kept = [names[i] for i in range(len(names)) if i + 1 in present]
    return Atlas(labels=labels, affine=np.asarray(template.affine, float), names=tuple(kept), name=spec)
