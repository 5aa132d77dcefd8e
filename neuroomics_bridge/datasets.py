"""Data sets for examples, tests and demos (generated locally; nothing is downloaded)."""

from neuroomics_bridge.data.paraphrases import DIAGNOSIS_WORDING_SETS, PBMC_WORDING_SETS
from neuroomics_bridge.data.pbmc import PBMC_CELL_TYPES, pbmc_cell_type_cohort
from neuroomics_bridge.data.synthetic import DIAGNOSES, GENE_PROGRAMMES, synthetic_cohort

__all__ = [
    "DIAGNOSES",
    "DIAGNOSIS_WORDING_SETS",
    "GENE_PROGRAMMES",
    "PBMC_CELL_TYPES",
    "PBMC_WORDING_SETS",
    "pbmc_cell_type_cohort",
    "synthetic_cohort",
]
