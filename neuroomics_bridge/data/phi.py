"""Scrubbing protected health information from clinical text before it is tokenised.

Rule-based (HIPAA Safe Harbor identifiers that have a recognisable surface form), offline and
deterministic. Each match is replaced by a typed placeholder such as ``[DATE]`` and counted.

Covered: dates (numeric, ISO and written months), phone and fax numbers, e-mail addresses, URLs,
IPv4/IPv6 addresses, record/account/SSN-style numbers (after a label such as ``MRN``, or long
digit runs), ages over 89, names after a title (``Dr``, ``Mrs`` ...) or in signature and
clinician lines (``Signed by``, ``Attending:`` ...), and street addresses (number + street
suffix, optionally with city, state and ZIP). Not covered: names with no title or signature cue
("seen with John today"), places without a street form (towns, hospitals), ages and dates written
in words ("ninety-two", "last Christmas"), and device or vehicle identifiers without a label. A
statistical de-identifier (e.g. Philter, Presidio with a clinical model) should follow for data
leaving the research environment.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable

from neuroomics_bridge.errors import DataError

__all__ = ["PHI_TYPES", "ScrubResult", "scrub_phi"]

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DAY_OR_MONTH = r"(?:0?[1-9]|[12]\d|3[01])"  # either part of a numeric date (day-month or month-day order)
_TITLE = r"(?:Dr|DR|Doctor|DOCTOR|Mr|MR|Mrs|MRS|Ms|Miss|Prof|PROF|Professor|Nurse)\.?"  # not MS: multiple sclerosis
_CREDENTIAL = r"(?:MD|DO|PhD|RN|NP|PA|MBBS|MRCP|FRCP)"  # after a signature's comma: not a first name
_FIRST_AFTER_COMMA = rf"(?:,\s+(?!{_CREDENTIAL}\b)[A-Z][a-zA-Z'\-]+(?![\w-]))?"  # "Garcia, Maria"
_NAME = r"[A-Z][a-zA-Z'\-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-zA-Z'\-]+){0,2}"
_STREET = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Parkway|Pkwy|Highway|Hwy|Square|Sq)\.?"
)

# Order matters: the first pattern to claim a span wins (URLs before e-mails before IDs ...).
# Where a pattern has a group ``phi``, only that group is replaced (the cue, e.g. "Dr.", stays).
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("URL", re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)]")),
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("IP", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("IP", re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}\b")),
    (
        "FAX",
        re.compile(
            r"(?i)\bfax(?:\s*(?:no\.?|number|#))?\s*:?\s*(?:\+?\d{1,3}[\s.-]?)?\(?\d{2,4}\)?[\s.-]?\d{3,4}[\s.-]?\d{3,4}\b"
        ),
    ),
    ("PHONE", re.compile(r"(?<![\w/])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)[\s.-]?|\d{3}[\s.-])\d{3}[\s.-]\d{4}\b")),
    ("PHONE", re.compile(r"(?<![\w/])\+\d{2}\s?\d{2,4}\s\d{3,4}\s\d{3,4}\b")),
    ("ID", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),  # SSN
    (
        "ID",
        re.compile(
            r"(?i)\b(?:MRN|medical record(?: number| no\.?)?|record(?: number| no\.?| #)|account(?: number| no\.?| #)?|"
            r"acct\.?|patient id|hospital number|NHS(?: number| no\.?)?|insurance(?: number| no\.?| id)?|"
            r"member id|policy(?: number| no\.?)?|accession(?: number| no\.?)?)\s*[:#]?\s*[A-Z]{0,3}[-\s]?\d[\d-]{3,}\b"
        ),
    ),
    (
        "DATE",
        re.compile(
            rf"(?i)\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH},?\s+\d{{4}}|{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
            rf"|\d{{1,2}}-{_MONTH}-(?:\d{{4}}|\d{{2}})"
            rf"|{_MONTH}\s+\d{{4}}|\d{{4}}-\d{{2}}-\d{{2}}|(?:19|20)\d{{2}}[/.]\d{{1,2}}[/.]\d{{1,2}}"
            rf"|{_DAY_OR_MONTH}(?P<sep>[/-]){_DAY_OR_MONTH}(?P=sep)(?:\d{{4}}|\d{{2}})"
            rf"|{_DAY_OR_MONTH}\.(?:0?[1-9]|1[0-2])\.(?:19|20)\d{{2}}|(?:0?[1-9]|1[0-2])/(?:19|20)\d{{2}}"
            rf"|(?-i:{_MONTH})\s+\d{{1,2}}(?:st|nd|rd|th)?(?!\d)|\d{{1,2}}(?:st|nd|rd|th)?\s+(?-i:{_MONTH}))\b"
            r"(?!\s*(?:mg|mcg|µg|g|ml|units?|iu|mmol|%|dilution)\b)"  # a dose titration (5-10-20 mg), not a date
        ),
    ),
    ("DATE", re.compile(r"(?i:\b(?:dob|date of birth|born(?: on)?)\s*:?\s*)(?P<phi>\d{1,2}[/.-]\d{1,2})(?![/.-]?\d)")),
    ("AGE>89", re.compile(r"\b(?P<phi>9\d|1[0-2]\d)(?=[\s-]*(?:years?\b|yrs?\b|y\.?/?o\b))")),
    ("AGE>89", re.compile(r"(?i:\bage[d:]?\s+)(?P<phi>9\d|1[0-2]\d)\b")),
    (
        "ADDRESS",
        re.compile(
            rf"\b\d{{1,5}}\s+(?:[A-Z][a-z]+\s+){{1,3}}{_STREET}(?:,?\s+(?:Apt|Suite|Unit)\.?\s*\w+)?"
            r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)?)?(?:,?\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?"
        ),
    ),
    ("NAME", re.compile(rf"\b{_TITLE}\s+(?P<phi>{_NAME})")),
    (
        "NAME",
        re.compile(
            r"(?i:\b(?:signed(?: by)?:?|attending(?: physician)?:|physician:|dictated by:?|cc:|referred by:?|"
            rf"(?:patient )?name:))\s+(?:{_TITLE}\s+)?(?P<phi>{_NAME}{_FIRST_AFTER_COMMA})"
        ),
    ),
    ("ID", re.compile(r"(?<![\w.])\d{7,}(?!\w|\.\d)")),  # a bare long number: a record number more often than not
]
PHI_TYPES = tuple(dict.fromkeys(kind for kind, _ in _PATTERNS))


@dataclasses.dataclass
class ScrubResult:
    """The scrubbed text and how many identifiers of each type were replaced."""

    text: str
    counts: Counter[str]


def scrub_phi(text: str, *, types: Iterable[str] = PHI_TYPES) -> ScrubResult:
    """Replace every identifier of ``types`` in ``text`` by ``[TYPE]``; count them by type.

    Where patterns overlap, the first in the module's pattern order claims the span.

    Parameters
    ----------
    text
        The clinical text.
    types
        Which of :data:`PHI_TYPES` to scrub (default: all).

    Raises
    ------
    DataError
        For a type not in :data:`PHI_TYPES` (a ``ValueError``, as all library errors).
    """
    wanted = set(types)
    unknown = wanted - set(PHI_TYPES)
    if unknown:
        raise DataError(f"scrub_phi: unknown PHI types {sorted(unknown)}; known: {list(PHI_TYPES)}")
    spans: list[tuple[int, int, str]] = []
    taken = [False] * (len(text) + 1)
    for kind, pattern in _PATTERNS:
        if kind not in wanted:
            continue
        for match in pattern.finditer(text):
            start, end = match.span("phi") if "phi" in pattern.groupindex else match.span()
            if end > start and not any(taken[start:end]):
                spans.append((start, end, kind))
                taken[start:end] = [True] * (end - start)
    counts: Counter[str] = Counter()
    pieces, cursor = [], 0
    for start, end, kind in sorted(spans):
        pieces += [text[cursor:start], f"[{kind}]"]
        counts[kind] += 1
        cursor = end
    pieces.append(text[cursor:])
    return ScrubResult("".join(pieces), counts)
