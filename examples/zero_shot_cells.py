"""A notebook-style session on real cells: AnnData in, aligned embeddings and zero-shot labels out, a UMAP.

scanpy's pbmc68k_reduced (700 real PBMCs, 10 cell types) stands in for a user's data. Each cell is
encoded (PCA on its genes, fitted on the training fold: the file keeps 765 genes, fewer than
the 2,000 highly variable ones the encoder would otherwise select), a bridge is aligned with the
cell types' descriptions (contrastive stage only), and then everything lands in the AnnData the
way scanpy users expect: ``obsm["X_nob_gene"]`` (aligned embeddings), ``obs["nob_gene_zero_shot"]``
(the zero-shot cell type, categorical) with its probabilities in ``obsm``, and a UMAP on the
aligned embeddings coloured by zero-shot label beside the annotated type.

    python examples/zero_shot_cells.py --out results/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import scanpy as sc
import torch

from neuroomics_bridge import Bridge, GeneEncoder, TextBackbone, datasets, fit_alignment

matplotlib.use("Agg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("nob-cells-example"))
    parser.add_argument("--epochs", type=int, default=10, help="contrastive epochs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. Cells as a cohort: one vector per cell from the training fold's PCA.
    cohort = datasets.pbmc_cell_type_cohort()
    split = cohort.split(seed=0)
    encoded = cohort.encode({"gene": GeneEncoder(n_components=50, n_top_genes=2000)}, fit_on=split.train)

    # 2. Align the cells with their type descriptions (CLIP-style, the default backbone as text encoder).
    torch.manual_seed(0)
    bridge = Bridge(TextBackbone.from_pretrained("smollm2-135m-instruct"), {"gene": 50})
    fit_alignment(bridge, encoded, "contrastive", split=encoded.split(seed=0), max_epochs=args.epochs, seed=0,
                  root_dir=args.out / "runs", class_prompt=datasets.PBMC_CELL_TYPES)  # fmt: skip

    # 3. Back to AnnData: the scanpy object, the encoded vectors in obsm, results written by key.
    adata = sc.datasets.pbmc68k_reduced()
    adata.obsm["gene"] = encoded.features["gene"]  # rows follow obs_names (the cohort's subject ids)
    bridge.embed("gene", adata)  # -> obsm["X_nob_gene"], uns["X_nob_gene"]
    bridge.zero_shot("gene", adata, datasets.PBMC_CELL_TYPES)  # -> obs["nob_gene_zero_shot"] + probabilities
    test = adata.obs_names.isin(split.test.subject_ids)
    agreement = (adata.obs["nob_gene_zero_shot"].astype(str) == adata.obs["bulk_labels"].astype(str))[test].mean()
    print(f"zero-shot cell type = annotated type on {agreement:.2f} of the {test.sum()} held-out cells")

    # 4. The usual scanpy plot, on the aligned space.
    sc.pp.neighbors(adata, use_rep="X_nob_gene", n_neighbors=15, random_state=0)
    sc.tl.umap(adata, random_state=0)
    figure = sc.pl.umap(adata, color=["nob_gene_zero_shot", "bulk_labels"], show=False, return_fig=True)
    figure.savefig(args.out / "umap_zero_shot.png", dpi=100, bbox_inches="tight")
    adata.write_h5ad(args.out / "cells_with_bridge.h5ad")
    print(f"wrote {args.out / 'umap_zero_shot.png'} and {args.out / 'cells_with_bridge.h5ad'}")


if __name__ == "__main__":
    main()
