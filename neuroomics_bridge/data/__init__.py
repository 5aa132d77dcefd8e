"""Cohorts of subjects and the data sets the library ships or generates."""

from neuroomics_bridge.data.cohort import Cohort, CohortSplit
from neuroomics_bridge.data.encoding import CohortEncoder

__all__ = ["Cohort", "CohortEncoder", "CohortSplit"]
