"""Small sample corpora and instruction files for examples, tests and the shipped configs.

Three pretraining sources in three formats: ``biomedical.jsonl`` (sentences on the risk genes and
regions of the synthetic cohort's disorders, written by the project), ``clinical/`` (one text
note per synthetic subject, with planted identifiers for the PHI scrubber), ``general.parquet``
(real English prose: the Python documentation topics that ship with CPython in
``pydoc_data``). Plus ``instructions/train.jsonl`` and ``val.jsonl`` from
:func:`synthetic_instructions`. Everything is seeded and deterministic.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from neuroomics_bridge.data.instructions import synthetic_instructions, write_instructions
from neuroomics_bridge.io import atomic_directory

__all__ = ["write_samples"]

REGIONS = {
    "Alzheimer's disease": "the hippocampus and posterior cingulate",
    "Parkinson's disease": "the putamen, caudate and substantia nigra",
    "frontotemporal dementia": "the frontal and anterior temporal lobes",
}
CLINICIANS = ["Dr. Ana Ruiz", "Dr. Tom Baker", "Dr. Mei Lin", "Dr. Sam Osei"]


def _biomedical(rng: np.random.Generator, n: int) -> list[str]:
    from neuroomics_bridge.data.synthetic import GENE_PROGRAMMES

    documents = []
    for _ in range(n):
        disorder = str(rng.choice(list(GENE_PROGRAMMES)))
        genes = rng.choice(GENE_PROGRAMMES[disorder], 3, replace=False)
        documents.append(
            f"Variants in {genes[0]} and {genes[1]} are associated with {disorder}. "
            f"Expression of {genes[2]} is altered in post-mortem tissue, and grey matter loss in "
            f"{REGIONS[disorder]} tracks disease stage on MRI. Single-cell studies place {genes[0]} "
            f"in {rng.choice(['microglia', 'astrocytes', 'neurons', 'oligodendrocytes'])!s}."
        )
    return documents


def _clinical(rng: np.random.Generator, n: int) -> list[str]:
    from neuroomics_bridge.data.synthetic import synthetic_cohort

    cohort = synthetic_cohort(n, seed=int(rng.integers(1 << 16)), cells_per_subject=2, brain_resolution_mm=8)
    notes = []
    for report in cohort.reports or []:
        day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(2015, 2025))
        mrn = "".join(str(d) for d in rng.integers(0, 10, 8))
        notes.append(
            f"MRN: {mrn}. Seen on {day:02d}/{month:02d}/{year} in the memory clinic.\n{report}\n"
            f"Signed by {rng.choice(CLINICIANS)!s}. Phone 555-{rng.integers(100, 999)}-{rng.integers(1000, 9999)}."
        )
    return notes


def _general() -> list[str]:
    from pydoc_data.topics import topics

    return [text for _, text in sorted(topics.items()) if len(text) > 200]


def write_samples(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the sample corpora and instruction files under ``directory`` (atomically).

    ``corpora/biomedical.jsonl``, ``corpora/clinical/note-*.txt`` and ``corpora/general.parquet``,
    then ``instructions/train.jsonl`` and ``instructions/val.jsonl`` (a 90/10 split of the
    instruction records of 120 synthetic subjects, several per subject). An existing
    ``directory`` is replaced as a whole.

    Parameters
    ----------
    directory
        The folder to create.
    seed
        Seeds every random choice, so equal seeds give equal files.

    Returns
    -------
    Path
        ``directory``.
    """
    rng = np.random.default_rng(seed)
    target = Path(directory)
    with atomic_directory(target, kind="sample data folder", marker="corpora") as tmp:
        corpora = tmp / "corpora"
        (corpora / "clinical").mkdir(parents=True)
        lines = "".join(json.dumps({"text": t}) + "\n" for t in _biomedical(rng, 400))
        (corpora / "biomedical.jsonl").write_text(lines, encoding="utf-8")
        for i, note in enumerate(_clinical(rng, 120)):
            (corpora / "clinical" / f"note-{i:04d}.txt").write_text(note, encoding="utf-8")
        pd.DataFrame({"text": _general()}).to_parquet(corpora / "general.parquet", index=False)
        records = synthetic_instructions(120, seed=seed)
        order = rng.permutation(len(records))
        cut = int(0.9 * len(records))
        write_instructions([records[i] for i in order[:cut]], tmp / "instructions" / "train.jsonl")
        write_instructions([records[i] for i in order[cut:]], tmp / "instructions" / "val.jsonl")
    return target


if __name__ == "__main__":
    import sys

    print(write_samples(sys.argv[1] if len(sys.argv) > 1 else "examples/data"))
