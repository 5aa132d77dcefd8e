"""Real cells with texts: scanpy's pbmc68k_reduced, each cell paired with its cell type's description.

700 peripheral blood mononuclear cells (10 cell types, log-normalised expression of 765 genes)
ship with scanpy, so this is the offline stand-in for the cell-text corpora that single-cell
language alignment uses (CellWhisperer's class-level evaluation pairs cells with short texts
about their type the same way).
"""

from __future__ import annotations

from neuroomics_bridge.data.cohort import Cohort

__all__ = ["PBMC_CELL_TYPES", "pbmc_cell_type_cohort"]

PBMC_CELL_TYPES = {
    "CD14+ Monocyte": "Classical monocyte. A myeloid cell expressing CD14, LYZ and S100A8 that patrols the blood.",
    "CD19+ B": "B cell. A lymphocyte expressing CD19, CD79A and MS4A1 that makes antibodies.",
    "CD34+": "Haematopoietic progenitor. An immature CD34-positive stem or progenitor cell.",
    "CD4+/CD25 T Reg": "Regulatory T cell. A CD4 T cell expressing CD25 and FOXP3 that restrains immune responses.",
    "CD4+/CD45RA+/CD25- Naive T": "Naive CD4 T cell. A helper T cell with CD45RA and CCR7 that has not met antigen.",
    "CD4+/CD45RO+ Memory": "Memory CD4 T cell. A helper T cell expressing CD45RO that remembers a past antigen.",
    "CD56+ NK": "Natural killer cell. A cytotoxic innate lymphocyte expressing NCAM1 (CD56), GNLY and NKG7.",
    "CD8+ Cytotoxic T": "Cytotoxic CD8 T cell. A killer T cell expressing CD8A, GZMB and perforin.",
    "CD8+/CD45RA+ Naive Cytotoxic": "Naive CD8 T cell. A killer T cell with CD8A and CD45RA that has not met antigen.",
    "Dendritic": "Dendritic cell. An antigen-presenting cell expressing HLA-DR and FCER1A that primes T cells.",
}


def pbmc_cell_type_cohort() -> Cohort:
    """The 700 cells as a cohort of 'subjects': raw log-normalised genes, labels and type texts.

    ``genes`` holds the log-normalised expression (``.raw`` of the scanpy data set) with
    ``obs['subject_id']`` equal to the cell barcode, so ``Cohort.encode`` with a
    :class:`GeneEncoder` gives one vector per cell.
    """
    import scanpy as sc

    data = sc.datasets.pbmc68k_reduced()
    cells = data.raw.to_adata()
    cells.obs = cells.obs[["bulk_labels"]].copy()
    cells.obs["subject_id"] = cells.obs_names.astype(str)
    labels = cells.obs["bulk_labels"].astype(str).tolist()
    return Cohort(
        subject_ids=list(cells.obs_names),
        reports=[PBMC_CELL_TYPES[label] for label in labels],
        labels=labels,
        genes=cells,
    )
