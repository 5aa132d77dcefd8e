"""The benchmark registry: each task's reader, answer kind, prompt, headline metric and files.

Tasks follow the three seed systems' evaluations: PubMedQA, MedQA and MedMCQA (all three), and
Me-LLaMA's task families (NER, relation extraction, classification, summarisation, NLI). A task's
data lives at ``DATA/<task>.<ext>`` or ``DATA/<task>/test.<ext>``; an optional
``DATA/<task>.train.<ext>`` or ``DATA/<task>/train.<ext>`` supplies k-shot exemplars.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.evaluation import loaders
from neuroomics_bridge.evaluation.loaders import LETTERS, Example

__all__ = ["TASKS", "BenchmarkTask", "task_files", "get_task", "user_message", "reference_answer", "LETTERS"]

Kind = Literal["choice", "entities", "labels", "text"]

HALLMARKS = (
    "sustaining proliferative signaling",
    "evading growth suppressors",
    "resisting cell death",
    "enabling replicative immortality",
    "inducing angiogenesis",
    "activating invasion and metastasis",
    "genomic instability and mutation",
    "tumor promoting inflammation",
    "cellular energetics",
    "avoiding immune destruction",
)
DDI_LABELS = {
    **{name: name for name in ("mechanism", "effect", "advise", "int", "none")},
    **{f"ddi-{name}": name for name in ("mechanism", "effect", "advise", "int")},
    "ddi-false": "none",
    "false": "none",
}
NLI3 = {name: name for name in ("entailment", "neutral", "contradiction")}
NLI2 = {  # BioNLI calls its classes consistent / inconsistent
    **{name: name for name in ("entailment", "contradiction")},
    "consistent": "entailment",
    "inconsistent": "contradiction",
}


@dataclasses.dataclass(frozen=True)
class BenchmarkTask:
    """A benchmark: how to read it, what an answer is, how to ask and how to score.

    Attributes
    ----------
    name, family
        The registry id and the Me-LLaMA task family (``qa``, ``nli``, ``ner`` ...).
    kind
        ``choice`` (one of ``options``; scored by log-likelihood or by parsing a generated
        answer), ``entities`` (NER, entity-level F1), ``labels`` (multi-label, macro-F1), ``text``
        (ROUGE-L).
    reader
        Reads the task's file into :class:`Example` items.
    instruction
        The first line of every user turn.
    primary
        The headline metric.
    source
        Where the data comes from and under which licence (named when files are missing).
    labels
        The entity types (NER) or the label set (multi-label) listed in the prompt.
    letters
        Options are listed as A., B., ... and answered by letter (MedQA, MedMCQA); otherwise the
        answer is the label word itself.
    max_new_tokens
        Longest generated answer.
    """

    name: str
    family: str
    kind: Kind
    reader: Callable[[Path], list[Example]]
    instruction: str
    primary: str
    source: str
    labels: tuple[str, ...] = ()
    letters: bool = False
    max_new_tokens: int = 8

    def choices(self, example: Example) -> tuple[str, ...]:
        """What a choice answer looks like: the letters, or the option words."""
        return tuple(LETTERS[: len(example.options)]) if self.letters else example.options


TASKS: dict[str, BenchmarkTask] = {
    task.name: task
    for task in (
        BenchmarkTask(
            name="pubmedqa",
            family="qa",
            kind="choice",
            reader=loaders.read_pubmedqa,
            primary="accuracy",
            instruction="Answer the biomedical research question from the abstract.",
            source="PubMedQA ori_pqal.json (github.com/pubmedqa/pubmedqa), MIT",
        ),
        BenchmarkTask(
            name="medqa",
            family="qa",
            kind="choice",
            reader=loaders.read_medqa,
            primary="accuracy",
            letters=True,
            instruction="Answer the USMLE-style medical exam question.",
            source="MedQA-USMLE questions/US/*.jsonl (github.com/jind11/MedQA)",
        ),
        BenchmarkTask(
            name="medmcqa",
            family="qa",
            kind="choice",
            reader=loaders.read_medmcqa,
            primary="accuracy",
            letters=True,
            instruction="Answer the medical entrance exam question.",
            source="MedMCQA dev.json (medmcqa.github.io), Apache-2.0",
        ),
        BenchmarkTask(
            name="mednli",
            family="nli",
            kind="choice",
            primary="macro_f1",
            reader=functools.partial(loaders.read_nli, labels=NLI3),
            instruction="Decide how the hypothesis relates to the premise from a clinical note.",
            source="MedNLI mli_test_v1.jsonl (PhysioNet, credentialed)",
        ),
        BenchmarkTask(
            name="bionli",
            family="nli",
            kind="choice",
            primary="macro_f1",
            reader=functools.partial(loaders.read_nli, labels=NLI2),
            instruction="Decide whether the conclusion follows from the abstract's premises.",
            source="BioNLI (github.com/StonyBrookNLP/BioNLI), CC BY 4.0",
        ),
        BenchmarkTask(
            name="bc5cdr",
            family="ner",
            kind="entities",
            primary="f1",
            labels=("Chemical", "Disease"),
            reader=functools.partial(loaders.read_ner, default_type=None),
            max_new_tokens=96,
            instruction="Find the chemicals and diseases mentioned in the sentence.",
            source="BC5CDR (BioCreative V CDR) in BIO or span-JSON form",
        ),
        BenchmarkTask(
            name="ncbi-disease",
            family="ner",
            kind="entities",
            primary="f1",
            labels=("Disease",),
            reader=functools.partial(loaders.read_ner, default_type="Disease"),
            max_new_tokens=96,
            instruction="Find the diseases mentioned in the sentence.",
            source="NCBI-disease corpus in BIO or span-JSON form",
        ),
        BenchmarkTask(
            name="ddi",
            family="relation_extraction",
            kind="choice",
            primary="macro_f1",
            reader=functools.partial(loaders.read_relations, labels=DDI_LABELS),
            instruction=(
                "Classify the interaction between the two drugs marked @DRUG$: mechanism (pharmacokinetic), "
                "effect, advise (a recommendation), int (an interaction without detail) or none."
            ),
            source="DDI-2013 as in the BLUE benchmark (ddi2013-type/test.tsv)",
        ),
        BenchmarkTask(
            name="hoc",
            family="classification",
            kind="labels",
            primary="macro_f1",
            labels=HALLMARKS,
            reader=functools.partial(loaders.read_multilabel, labels=HALLMARKS),
            max_new_tokens=48,
            instruction="Which hallmarks of cancer does the text discuss?",
            source="Hallmarks of Cancer corpus (Baker et al. 2016) as {text, labels}",
        ),
        BenchmarkTask(
            name="summarisation",
            family="summarisation",
            kind="text",
            primary="rouge_l",
            reader=loaders.read_summaries,
            max_new_tokens=96,
            instruction="Summarise the text.",
            source="document/summary pairs (e.g. PubMed abstracts, MIMIC-CXR findings/impression)",
        ),
    )
}

SUFFIXES = (".jsonl", ".json", ".tsv", ".csv", ".parquet", ".txt", ".conll", ".iob")


def get_task(name: str) -> BenchmarkTask:
    """The registry entry ``name``.

    Raises
    ------
    DataError
        For an unknown name; the message lists the known ones.
    """
    if name not in TASKS:
        raise DataError(f"unknown benchmark task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def task_files(data_dir: str | os.PathLike[str], task: BenchmarkTask) -> tuple[Path, Path | None]:
    """The task's evaluation file under ``data_dir`` and its k-shot pool file, if any.

    The evaluation file is ``<task>.<ext>`` or ``<task>/test.<ext>``, the pool ``<task>.train.<ext>``
    or ``<task>/train.<ext>``.

    Raises
    ------
    MissingFileError
        When there is no evaluation file (the message names the expected paths and the source).
    DataError
        When more than one file could be the evaluation or the pool file.
    """
    root = Path(data_dir)

    def find(stems: tuple[Path, ...]) -> Path | None:
        found = [stem.with_name(stem.name + suffix) for stem in stems for suffix in SUFFIXES]
        found = [path for path in found if path.is_file()]
        if len(found) > 1:
            raise DataError(f"{task.name}: more than one file could be the data: {[str(f) for f in found]}")
        return found[0] if found else None

    evaluation = find((root / task.name, root / task.name / "test"))
    if evaluation is None:
        raise MissingFileError(
            f"{root}: no data for {task.name!r}; expected {root / task.name}.<ext> or {root / task.name}/test.<ext> "
            f"(<ext> one of {', '.join(s.lstrip('.') for s in SUFFIXES)}) holding {task.source}"
        )
    return evaluation, find((root / f"{task.name}.train", root / task.name / "train"))


def user_message(task: BenchmarkTask, example: Example) -> str:
    """The user turn that asks ``example``: instruction, passage, item, and the answer format."""
    parts = [task.instruction, ""]
    if task.kind == "choice":
        if example.context:
            parts.append(f"{'Premise' if task.family == 'nli' else 'Context'}: {example.context}")
        label = {"nli": "Hypothesis", "relation_extraction": "Sentence"}.get(task.family, "Question")
        parts.append(f"{label}: {example.text}")
        if task.letters:
            parts += [
                "Options:",
                *(f"{letter}. {text}" for letter, text in zip(LETTERS, example.options, strict=False)),
            ]
            parts.append("Answer with the letter of the correct option.")
        else:
            parts.append(f"Answer with one of: {', '.join(example.options)}.")
    elif task.kind == "entities":
        parts += [
            f"Sentence: {example.text}",
            f"List each entity on its own line as `type: span` (types: {', '.join(task.labels)}), or `none`.",
        ]
    elif task.kind == "labels":
        parts += [f"Text: {example.text}", f"List the labels that apply, one per line, from: {'; '.join(task.labels)}."]
        parts.append("Answer `none` if none applies.")
    else:
        parts += [f"Text: {example.text}", "Write a one-sentence summary."]
    return "\n".join(parts)


def reference_answer(task: BenchmarkTask, example: Example) -> str:
    """The answer a perfect model gives (used for k-shot exemplars)."""
    if task.kind == "choice":
        return task.choices(example)[example.correct_option]
    if task.kind in ("entities", "labels"):
        return "\n".join(example.answer_set) or "none"
    return example.answer
