"""Cohorts of subjects and the data sets the library ships or generates."""

from neuroomics_bridge.data.cohort import Cohort, CohortSplit

__all__ = ["Cohort", "CohortSplit"]
