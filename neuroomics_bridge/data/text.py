"""Small text utilities for clinical reports."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

__all__ = ["sentences", "report_views", "text_ids"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def sentences(text: str) -> list[str]:
    """Split a report into sentences (at ``.``, ``!`` or ``?`` followed by a capital or digit)."""
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


def report_views(text: str) -> list[str]:
    """The report itself and each of its sentences: the text views a subject is aligned with.

    Sampling one view per step (as CLIP samples one of several captions) teaches the text head
    that a short sentence such as ``"Impression: Parkinson's disease."`` belongs with the
    subject, which is what a zero-shot class prompt looks like.
    """
    parts = sentences(text)
    return [text, *parts] if len(parts) > 1 else [text]


def text_ids(texts: Sequence[str]) -> list[int]:
    """A stable 56-bit id per text (equal texts, equal ids), the same in every process."""
    return [int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:7], "big") for t in texts]
