"""Reading a generated text: its impression, the class it names, one section per modality."""

from __future__ import annotations

import re
from collections.abc import Sequence

from neuroomics_bridge.data.text import sentences
from neuroomics_bridge.reports.report import DATA_NAMES, IMPRESSION, section_name

__all__ = ["parse_label", "split_sections"]

SECTION_WORDS = {
    "gene": ("expression", "transcript", "gene", "regulat", "rna", "programme", "variant", "mutation"),
    "brain": (
        "mri",
        "imaging",
        "atroph",
        "volume",
        "grey matter",
        "gray matter",
        "scan",
        "cortic",
        "hippocamp",
        "striat",
    ),
}
CONTROL_WORDS = ("control", "no evidence of neurodegeneration", "healthy")


def parse_label(impression: str, classes: Sequence[str]) -> str | None:
    """The one class an impression names, or ``None`` (none or several: unparseable).

    A class matches by its full name or its first word ("Alzheimer's" for "Alzheimer's
    disease"), as whole words (a plural "s" allowed: "controls", not "symptoms controlled");
    ``control`` also matches "healthy" and "no evidence of neurodegeneration".
    """
    text = impression.lower().replace("’", "'")
    found = set()
    for label in classes:
        name = label.lower()
        words = (name, name.split()[0]) if len(name.split()[0]) >= 5 else (name,)
        if name == "control":
            words = CONTROL_WORDS
        if any(re.search(rf"\b{re.escape(w)}s?\b", text) for w in words):
            found.add(label)
    return found.pop() if len(found) == 1 else None


def split_sections(text: str, modalities: Sequence[str], present: Sequence[str]) -> dict[str, str]:
    """Sections of a free-text report: the impression, then one profile per modality.

    The impression is what follows the last ``Impression:`` (else the last sentence); a
    modality's profile gathers the other sentences that mention its vocabulary (expression and
    genes; imaging and anatomy). A modality the subject lacks says so.
    """
    parts = sentences(text)
    marker = text.lower().rfind("impression:")
    impression = text[marker + len("impression:") :].strip() if marker >= 0 else (parts[-1] if parts else "")
    body = [p for p in parts if "impression:" not in p.lower() and p != impression]
    sections = {IMPRESSION: impression or "Not stated."}
    for modality in modalities:
        heading = section_name(modality)
        if modality not in present:
            sections[heading] = f"No {DATA_NAMES.get(modality, modality)} data for this subject."
            continue
        words = SECTION_WORDS.get(modality, (modality,))
        found = [p for p in body if any(w in p.lower() for w in words)]
        sections[heading] = " ".join(found) or "Not described in the generated text."
    return sections
