"""Reports as a table: one row per report, for pandas users and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from neuroomics_bridge.reports.report import Report

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["reports_to_frame"]


def reports_to_frame(reports: Sequence[Report]) -> pd.DataFrame:
    """A DataFrame with one row per report, indexed by subject id.

    Columns: ``label`` and ``layout``; one column per report section (in the order sections
    first appear; a report lacking one has an empty string); the evidence as ``present`` and
    ``absent`` (comma-separated modalities), ``p(<class>)`` per zero-shot class, ``neighbours``
    (comma-separated subject ids) and ``known_<covariate>`` per stated covariate; then ``model``,
    ``adapters`` and ``notice``, so a table taken out of context still says what it is.

    Parameters
    ----------
    reports
        Reports, e.g. from :meth:`Bridge.generate_report` or a ``reports.jsonl`` read back.

    Returns
    -------
    pandas.DataFrame
        ``len(reports)`` rows; a new frame (the reports are not changed).
    """
    import pandas as pd

    sections = list(dict.fromkeys(heading for report in reports for heading in report.sections))
    rows = []
    for report in reports:
        evidence = report.evidence
        rows.append(
            {
                "subject_id": report.subject_id,
                "label": report.label,
                "layout": report.layout,
                **{heading: report.sections.get(heading, "") for heading in sections},
                "present": ", ".join(evidence.present),
                "absent": ", ".join(evidence.absent),
                **{f"p({label})": p for label, p in evidence.probabilities.items()},
                "neighbours": ", ".join(n.subject_id for n in evidence.neighbours),
                **{f"known_{name}": value for name, value in evidence.covariates.items()},
                "model": report.model,
                "adapters": report.adapters,
                "notice": report.notice,
            }
        )
    columns = ["subject_id", "label", "layout", *sections, "present", "absent"]
    return pd.DataFrame(rows, columns=_ordered(columns, rows)).set_index("subject_id")


def _ordered(leading: list[str], rows: list[dict[str, object]]) -> list[str]:
    """``leading`` then every other key in first-seen order, provenance last."""
    tail = ["model", "adapters", "notice"]
    seen = dict.fromkeys(key for row in rows for key in row)
    middle = [key for key in seen if key not in leading and key not in tail]
    return [*leading, *middle, *tail]
