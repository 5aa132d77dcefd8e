"""Encoders: expression data, brain images and precomputed embeddings to subject vectors.

This is where a subject vector is born; :class:`CohortEncoder` runs them over a whole cohort.
"""

from neuroomics_bridge.encoders.atlases import BUILTIN_ATLASES, Atlas
from neuroomics_bridge.encoders.brain import BrainEncoder
from neuroomics_bridge.encoders.cohort import CohortEncoder
from neuroomics_bridge.encoders.covariates import Residualizer, residualize
from neuroomics_bridge.encoders.gene import GeneEncoder
from neuroomics_bridge.encoders.precomputed import PrecomputedEncoder

__all__ = [
    "BUILTIN_ATLASES",
    "Atlas",
    "BrainEncoder",
    "CohortEncoder",
    "GeneEncoder",
    "PrecomputedEncoder",
    "Residualizer",
    "residualize",
]
