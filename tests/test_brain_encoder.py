"""BrainEncoder and atlases on nibabel's test images and nilearn's MNI152 template."""

from __future__ import annotations

import gzip
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path
from nilearn.datasets import load_mni152_gm_template

from neuroomics_bridge import ConfigError, CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.encoders import Atlas, BrainEncoder

ANATOMICAL = os.path.join(data_path, "anatomical.nii")  # 3D, 33 x 41 x 25
FUNCTIONAL = os.path.join(data_path, "functional.nii")  # 4D, 17 x 21 x 3 x 20


def octant_atlas(image_path: str) -> Atlas:
    """Eight box regions covering the image's own grid."""
    img = nib.load(image_path)
    shape = img.shape[:3]
    i, j, k = np.indices(shape)
    labels = 1 + (i >= shape[0] // 2) + 2 * (j >= shape[1] // 2) + 4 * (k >= shape[2] // 2)
    return Atlas.from_image(
        nib.Nifti1Image(labels.astype(np.int16), img.affine), names=[f"box{n}" for n in range(1, 9)]
    )


def test_builtin_grey_matter_atlas_is_deterministic_and_balanced() -> None:
    atlas = Atlas.builtin("mni-gm-64")
    again = Atlas.builtin("mni-gm-64")
    assert atlas.n_regions == 64
    np.testing.assert_array_equal(atlas.labels, again.labels)
    sizes = np.bincount(atlas.labels.ravel())[1:]
    assert sizes.max() - sizes.min() <= 2
    assert all(name.startswith("L") for name in atlas.names[:32]) and all(
        name.startswith("R") for name in atlas.names[32:]
    )


@pytest.mark.parametrize(("spec", "n_regions"), [("power2011", 264), ("dosenbach2010", 160), ("seitzman2018", 300)])
def test_coordinate_atlases_have_one_region_per_sphere(spec: str, n_regions: int) -> None:
    atlas = Atlas.builtin(spec)
    assert atlas.n_regions == n_regions and len(atlas.names) == n_regions


def test_unknown_atlas_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match=r"atlas 'aal': not a file and not a built-in atlas; built-ins: \['mni-gm-"):
        BrainEncoder(atlas="aal").fit([ANATOMICAL])


def test_regional_means_equal_a_per_region_loop() -> None:
    atlas = octant_atlas(ANATOMICAL)
    features = BrainEncoder(atlas).extract([ANATOMICAL])[0]
    data = np.asanyarray(nib.load(ANATOMICAL).dataobj).astype(np.float64)
    expected = [data[atlas.labels == value].mean() for value in atlas.region_values]
    np.testing.assert_allclose(features, expected, rtol=1e-6)


def test_regional_means_equal_nilearns_labels_masker() -> None:
    from nilearn.maskers import NiftiLabelsMasker

    atlas = Atlas.builtin("mni-gm-64")
    template = load_mni152_gm_template(resolution=4)
    ours = BrainEncoder(atlas).extract([template])
    theirs = NiftiLabelsMasker(labels_img=atlas.image, standardize=None).fit_transform([template])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_connectivity_of_a_4d_series_is_fisher_z_of_the_regional_correlations() -> None:
    atlas = octant_atlas(FUNCTIONAL)
    encoder = BrainEncoder(atlas, features=("mean", "connectivity"))
    features = encoder.extract([FUNCTIONAL])[0]
    data = np.asanyarray(nib.load(FUNCTIONAL).dataobj).astype(np.float64)
    series = np.stack([data[atlas.labels == v].mean(axis=0) for v in atlas.region_values], axis=1)  # (20, 8)
    upper = np.triu_indices(8, k=1)
    expected = np.concatenate([series.mean(axis=0), np.arctanh(np.corrcoef(series.T)[upper])])
    assert features.shape == (8 + 28,)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    encoder.fit([FUNCTIONAL, FUNCTIONAL])
    assert encoder.feature_names_[8] == "box1~box2"


def test_reading_a_4d_series_in_chunks_gives_the_same_features() -> None:
    atlas = octant_atlas(FUNCTIONAL)
    whole = BrainEncoder(atlas, features=("connectivity",), chunk_volumes=100).extract([FUNCTIONAL])
    chunked = BrainEncoder(atlas, features=("connectivity",), chunk_volumes=3).extract([FUNCTIONAL])
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_image_on_another_grid_is_resampled_with_a_warning() -> None:
    atlas = Atlas.builtin("mni-gm-64")
    fine = load_mni152_gm_template(resolution=2)
    with pytest.warns(UserWarning, match=r"differs from the atlas mni-gm-64 grid .* resampled"):
        resampled = BrainEncoder(atlas).extract([fine])
    direct = BrainEncoder(atlas).extract([load_mni152_gm_template(resolution=4)])
    np.testing.assert_allclose(resampled, direct, atol=0.03)


def test_image_outside_the_atlas_is_an_error() -> None:
    template = load_mni152_gm_template(resolution=4)
    far_away = template.affine.copy()
    far_away[:3, 3] += 1000.0
    moved = nib.Nifti1Image(np.asanyarray(template.dataobj), far_away)
    with pytest.raises(DataError, match="does not overlap the atlas mni-gm-64"):
        BrainEncoder("mni-gm-64").extract([moved])


def test_partly_covered_atlas_regions_are_named() -> None:
    with (
        pytest.raises(DataError, match=r"anatomical\.nii: \d+ atlas region\(s\) have no finite voxel"),
        pytest.warns(UserWarning),
    ):
        BrainEncoder("mni-gm-64").extract([ANATOMICAL])


def test_4d_image_where_3d_is_expected_is_an_error() -> None:
    with pytest.raises(DataError, match=r"functional\.nii: expected a 3D image, got 4D shape .*\(20 volumes\)"):
        BrainEncoder(octant_atlas(FUNCTIONAL)).extract([FUNCTIONAL])


def test_connectivity_of_a_3d_image_is_an_error() -> None:
    with pytest.raises(DataError, match="'connectivity' needs a 4D time series"):
        BrainEncoder(octant_atlas(ANATOMICAL), features=("connectivity",)).extract([ANATOMICAL])


def test_truncated_nii_gz_names_the_file(tmp_path) -> None:
    source = tmp_path / "anatomical.nii.gz"
    with open(ANATOMICAL, "rb") as raw, gzip.open(source, "wb") as packed:
        shutil.copyfileobj(raw, packed)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CorruptFileError, match=r"truncated\.nii\.gz"):
        BrainEncoder(octant_atlas(ANATOMICAL)).extract([truncated])


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(MissingFileError, match=r"nowhere\.nii\.gz: no such image file"):
        BrainEncoder("mni-gm-64").extract([tmp_path / "nowhere.nii.gz"])


def test_a_single_image_instead_of_a_list_is_an_error() -> None:
    with pytest.raises(DataError, match="sequence of images"):
        BrainEncoder("mni-gm-64").fit(ANATOMICAL)


def test_scaling_and_pca_are_fitted_on_the_training_images_only(small_cohort) -> None:
    images = [image for image in small_cohort.brains if image is not None]
    train, test = images[:30], images[30:]
    encoder = BrainEncoder("mni-gm-64", n_components=5).fit(train)
    train_vectors, test_vectors = encoder.transform(train), encoder.transform(test)
    np.testing.assert_allclose(train_vectors.mean(axis=0), 0, atol=1e-4)
    assert np.abs(test_vectors.mean(axis=0)).max() > 1e-3  # new data is projected, not re-centred
    assert test_vectors.shape == (len(test), 5)


def test_save_load_keeps_the_atlas_even_if_its_file_is_gone(tmp_path, small_cohort) -> None:
    images = [image for image in small_cohort.brains if image is not None][:12]
    atlas_file = tmp_path / "atlas.nii.gz"
    nib.save(Atlas.builtin("mni-gm-64").image, atlas_file)
    encoder = BrainEncoder(str(atlas_file), n_components=4).fit(images)
    expected = encoder.transform(images)
    encoder.save(tmp_path / "brain.safetensors")
    atlas_file.unlink()
    restored = BrainEncoder.load(tmp_path / "brain.safetensors")
    np.testing.assert_allclose(restored.transform(images), expected, atol=1e-6)
    assert restored.region_names_ == encoder.region_names_


def test_refitting_with_another_atlas_uses_that_atlas(small_cohort) -> None:
    images = [image for image in small_cohort.brains if image is not None][:8]
    encoder = BrainEncoder("mni-gm-16").fit(images)
    encoder.set_params(atlas="mni-gm-64").fit(images)  # comparing atlases on one encoder
    assert len(encoder.region_names_) == 64 and encoder.transform(images).shape == (8, 64)
    np.testing.assert_allclose(encoder.transform(images), BrainEncoder("mni-gm-64").fit_transform(images), atol=1e-5)
