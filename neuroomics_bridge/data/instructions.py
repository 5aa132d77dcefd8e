"""Instruction records and task templates for instruction tuning (Me-LLaMA's task families).

A record is ``{task, instruction, input, output}`` (JSONL, one per line). The task's template
turns instruction and input into the user turn, and names the answer format, so one model learns
QA, NER, relation extraction, classification, summarisation, NLI and report writing without
their formats colliding. :func:`synthetic_instructions` writes such records from the synthetic
cohort (labels, genes and regions are known there), for examples and tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.io import read_jsonl

__all__ = ["TASK_TEMPLATES", "InstructionRecord", "read_instructions", "synthetic_instructions", "user_turn"]

TASK_TEMPLATES = {
    "qa": "{instruction}\n\nQuestion: {input}\nAnswer briefly.",
    "ner": "{instruction}\n\nText: {input}\nList the entities, one per line as `type: span`.",
    "relation_extraction": "{instruction}\n\nText: {input}\nList the relations, one per line: head | relation | tail.",
    "classification": "{instruction}\n\nText: {input}\nAnswer with the label only.",
    "summarisation": "{instruction}\n\nText: {input}\nWrite a one-sentence summary.",
    "nli": "{instruction}\n\n{input}\nAnswer with entailment, neutral or contradiction.",
    "report": "{instruction}\n\nFindings: {input}\nWrite the report.",
}
FIELDS = ("task", "instruction", "input", "output")


@dataclasses.dataclass(frozen=True)
class InstructionRecord:
    """One training or evaluation example."""

    task: str
    instruction: str
    input: str
    output: str


def user_turn(record: InstructionRecord) -> str:
    """The user message of a record: its task's template filled with instruction and input.

    Raises
    ------
    DataError
        For a task not in :data:`TASK_TEMPLATES`.
    """
    if record.task not in TASK_TEMPLATES:
        raise DataError(f"unknown task {record.task!r}; expected one of {sorted(TASK_TEMPLATES)}")
    return TASK_TEMPLATES[record.task].format(instruction=record.instruction, input=record.input).strip()


def read_instructions(path: str | os.PathLike[str]) -> list[InstructionRecord]:
    """Records from a JSONL file of ``{task, instruction, input, output}`` objects (``input`` optional).

    Raises
    ------
    MissingFileError
        When the file does not exist.
    DataError
        For a bad line (naming the file, line and field), an unknown task, an empty response, or
        no records.
    """
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"{file}: instruction file does not exist")
    records = []
    for number, raw in read_jsonl(file):
        missing = [k for k in FIELDS if not isinstance(raw.get(k), str) and (k != "input" or raw.get(k) is not None)]
        if missing:  # "input" may be absent or null (no input), else text like the rest
            raise DataError(f"{file}:{number}: expected string fields {list(FIELDS)}; missing or not text: {missing}")
        if raw["task"] not in TASK_TEMPLATES:
            raise DataError(f"{file}:{number}: unknown task {raw['task']!r}; expected one of {sorted(TASK_TEMPLATES)}")
        if not raw["output"].strip():  # the loss would teach the model to answer with nothing
            raise DataError(f"{file}:{number}: 'output' is empty; expected the response text")
        records.append(InstructionRecord(raw["task"], raw["instruction"], raw.get("input") or "", raw["output"]))
    if not records:
        raise DataError(f"{file}: no instruction records")
    return records


def write_instructions(records: list[InstructionRecord], path: str | os.PathLike[str]) -> Path:
    """Write records as JSONL, atomically; returns ``path``."""
    from neuroomics_bridge.io import atomic_write_text

    text = "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records)
    atomic_write_text(Path(path), text)
    return Path(path)


def synthetic_instructions(n_subjects: int = 200, *, seed: int = 0) -> list[InstructionRecord]:
    """Records of every task, written from the synthetic cohort's reports and latent labels.

    Parameters
    ----------
    n_subjects
        Subjects of the synthetic cohort; each gives five records, seven when its findings name
        a risk gene of its diagnosis.
    seed
        Seeds the cohort and the NLI claims.
    """
    from neuroomics_bridge.data.synthetic import DIAGNOSES, GENE_PROGRAMMES, synthetic_cohort

    cohort = synthetic_cohort(n_subjects, seed=seed, cells_per_subject=2, brain_resolution_mm=8)
    rng = np.random.default_rng(seed)
    records = []
    for report, label in zip(cohort.reports or [], cohort.labels or [], strict=True):
        findings = report.split(" Impression:")[0]
        genes = [g for g in re.findall(r"\b[A-Z][A-Z0-9]{2,}\b", findings) if g != "MRI"]
        other = str(rng.choice([d for d in DIAGNOSES if d != label]))
        claim = label if rng.random() < 0.5 else other
        records += [
            InstructionRecord("classification", "What is the most likely diagnosis?", findings, label),
            InstructionRecord(
                "nli",
                "Does the report support the statement?",
                f"Report: {findings}\nStatement: the findings suggest {claim}.",
                "entailment" if claim == label else "contradiction",
            ),
            InstructionRecord("summarisation", "Summarise the report.", report, report.split("Impression: ")[-1]),
            InstructionRecord("ner", "Find the genes.", findings, "\n".join(f"gene: {g}" for g in genes) or "none"),
            InstructionRecord("report", "Write the clinical report.", findings, report),
        ]
        programme = [g for g in genes if label in GENE_PROGRAMMES and g in GENE_PROGRAMMES[label]]
        if programme:
            records.append(
                InstructionRecord(
                    "relation_extraction",
                    "Which genes are linked to which disorder?",
                    findings + f" Known risk genes of {label} are raised.",
                    "\n".join(f"{g} | risk gene of | {label}" for g in programme),
                )
            )
            records.append(
                InstructionRecord(
                    "qa", "Answer from the report.", f"{findings} Which gene is raised first?", programme[0]
                )
            )
    return records


def iter_tasks(records: list[InstructionRecord]) -> Iterator[tuple[str, list[InstructionRecord]]]:
    """Records grouped by task, in template order."""
    for task in TASK_TEMPLATES:
        group = [r for r in records if r.task == task]
        if group:
            yield task, group
