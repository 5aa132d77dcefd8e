"""Generated reports: the research-use notice every output carries."""

from __future__ import annotations

__all__ = ["RESEARCH_NOTICE"]

RESEARCH_NOTICE = "Research use only — not for clinical decision-making."
