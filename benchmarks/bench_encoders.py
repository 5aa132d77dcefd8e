"""Encoder speed on this machine, each figure a ratio against a baseline run here and now.

1. BrainEncoder parcellation vs nilearn's ``NiftiLabelsMasker`` on the same 60 grey-matter
   maps (2 mm MNI grid, in memory) and the same 128-region atlas: values must agree to 1e-5;
   goal >= 3x faster.
2. ``GeneEncoder.transform`` throughput vs the equivalent plain scanpy calls
   (``normalize_total``, ``log1p``, gene subset, then the fitted scaling and projection) on
   20,000 cells; goal >= 1x.

Run: ``python benchmarks/bench_encoders.py``. Prints one JSON line per figure.
"""

from __future__ import annotations

import warnings

import numpy as np
from common import best_seconds, emit


def bench_parcellation() -> None:
    from nilearn.maskers import NiftiLabelsMasker

    from neuroomics_bridge.datasets import synthetic_cohort
    from neuroomics_bridge.encoders import Atlas, BrainEncoder

    images = synthetic_cohort(60, seed=0, cells_per_subject=1, brain_resolution_mm=2).brains
    atlas = Atlas.builtin("mni-gm-128-2mm")
    encoder = BrainEncoder(atlas)
    masker = NiftiLabelsMasker(labels_img=atlas.image, standardize=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = encoder.extract(images), masker.fit_transform(images)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)  # the same values, or no speed figure
        ours_s = best_seconds(lambda: encoder.extract(images))
        theirs_s = best_seconds(lambda: masker.fit_transform(images))
    emit(
        "brain_parcellation_vs_nilearn_labels_masker",
        theirs_s / ours_s,
        volumes=len(images),
        regions=atlas.n_regions,
        max_abs_difference=float(np.abs(ours - theirs).max()),
        ours_s=round(ours_s, 3),
        nilearn_s=round(theirs_s, 3),
    )


def bench_gene_transform() -> None:
    import scanpy as sc

    from neuroomics_bridge.datasets import synthetic_cohort
    from neuroomics_bridge.encoders import GeneEncoder

    cells = synthetic_cohort(200, seed=0, cells_per_subject=100).genes  # 20,000 cells x 808 genes
    encoder = GeneEncoder(n_components=32, n_top_genes=400).fit(cells[:5000])

    def plain_scanpy() -> np.ndarray:
        data = cells.copy()
        sc.pp.normalize_total(data, target_sum=encoder.target_sum)
        sc.pp.log1p(data)
        matrix = data[:, encoder.genes_].X.toarray()
        scaled = np.clip((matrix - encoder.mean_) / encoder.std_, -encoder.max_value, encoder.max_value)
        return (scaled - encoder.pca_mean_) @ encoder.components_.T

    np.testing.assert_allclose(encoder.transform(cells), plain_scanpy(), atol=1e-3)
    ours_s = best_seconds(lambda: encoder.transform(cells))
    plain_s = best_seconds(plain_scanpy)
    emit(
        "gene_transform_throughput_vs_plain_scanpy",
        plain_s / ours_s,
        cells=cells.n_obs,
        cells_per_s=round(cells.n_obs / ours_s),
        plain_cells_per_s=round(cells.n_obs / plain_s),
    )


if __name__ == "__main__":
    bench_parcellation()
    bench_gene_transform()
