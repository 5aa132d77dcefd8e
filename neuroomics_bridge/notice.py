"""The research-use notice every generated report, model card and page carries."""

__all__ = ["RESEARCH_NOTICE"]

RESEARCH_NOTICE = "Research use only — not for clinical decision-making."
