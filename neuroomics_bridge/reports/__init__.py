"""Reports: what a generated clinical summary is, how its prompt reads, how its text is parsed.

The decoding itself (soft prefix + prompt -> text) is :meth:`Bridge.generate_report`
(``bridge/generation.py``); this package holds the pieces it and every reader of reports share.
"""

from neuroomics_bridge.lazy import lazy_exports

_EXPORTS = {
    "RESEARCH_NOTICE": "neuroomics_bridge.notice",
    "Evidence": "neuroomics_bridge.reports.report",
    "Neighbour": "neuroomics_bridge.reports.report",
    "Report": "neuroomics_bridge.reports.report",
    "section_name": "neuroomics_bridge.reports.report",
    "parse_label": "neuroomics_bridge.reports.sections",
    "split_sections": "neuroomics_bridge.reports.sections",
    "report_prompt": "neuroomics_bridge.reports.prompts",
    "reports_to_frame": "neuroomics_bridge.reports.frame",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
