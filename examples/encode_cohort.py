"""Encoders inside an analysis script: AnnData and NIfTI in, subject vectors and a scanpy plot out.

Reads a cohort folder (``genes.h5ad``, ``brain/<subject>.nii.gz``, ``reports.csv``,
``covariates.csv``; by default a synthetic cohort written to a temporary folder first), fits the
gene and brain encoders on the training fold only, regresses out age, sex and site, and saves
the subject vectors plus a UMAP of them coloured by diagnosis.

    python examples/encode_cohort.py --data my_cohort/ --out results/
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import scanpy as sc

from neuroomics_bridge import BrainEncoder, Cohort, GeneEncoder, datasets

matplotlib.use("Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="cohort folder (default: a synthetic one)")
    parser.add_argument("--out", type=Path, default=Path("nob-encode-example"))
    args = parser.parse_args()

    data = args.data or datasets.synthetic_cohort(120, seed=0).to_files(Path(tempfile.mkdtemp()) / "cohort")
    cohort = Cohort.from_files(data)
    split = cohort.split(seed=0)
    encoders = {
        "gene": GeneEncoder(n_components=16, n_top_genes=500),
        "brain": BrainEncoder("mni-gm-64", n_components=16),
    }
    cohort = cohort.encode(encoders, fit_on=split.train, residualize=["age", "sex", "site"])

    args.out.mkdir(parents=True, exist_ok=True)
    both = np.concatenate([cohort.features["gene"], cohort.features["brain"]], axis=1)
    subjects = ad.AnnData(np.nan_to_num(both), obs=pd.DataFrame({"diagnosis": cohort.labels}, index=cohort.subject_ids))
    subjects.obsm["X_gene"], subjects.obsm["X_brain"] = cohort.features["gene"], cohort.features["brain"]
    subjects.write_h5ad(args.out / "subject_vectors.h5ad")

    sc.pp.neighbors(subjects, use_rep="X", n_neighbors=10, random_state=0)
    sc.tl.umap(subjects, random_state=0)
    figure = sc.pl.umap(subjects, color="diagnosis", show=False, return_fig=True, title="subjects: genes + brain")
    figure.savefig(args.out / "umap_by_diagnosis.png", dpi=120, bbox_inches="tight")
    dims = {modality: matrix.shape[1] for modality, matrix in cohort.features.items()}
    print(f"{cohort.n_subjects} subjects encoded, dimensions {dims}")
    print(f"wrote {args.out / 'subject_vectors.h5ad'} and {args.out / 'umap_by_diagnosis.png'}")


if __name__ == "__main__":
    main()
