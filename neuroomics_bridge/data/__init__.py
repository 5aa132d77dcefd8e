"""Cohorts of subjects, corpora, instruction records and PHI scrubbing."""

from neuroomics_bridge.data.cohort import Cohort, CohortSplit
from neuroomics_bridge.encoders.cohort import CohortEncoder

__all__ = ["Cohort", "CohortEncoder", "CohortSplit"]
