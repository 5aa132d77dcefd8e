"""Readers for the published file formats of medical NLP benchmarks.

Nothing here downloads: users fetch each dataset under its own licence and point the harness at
the files. Every reader returns :class:`Example` items; a missing field, an unknown label or a
broken line is a :class:`DataError` naming the file, the line (or key) and what was expected.

Formats read (JSON files may also be JSON lines, as MedMCQA's are):

- PubMedQA ``ori_pqal.json``: ``{pmid: {QUESTION, CONTEXTS, final_decision}}``, or records
  ``{question, context, final_decision}`` (the Hugging Face export).
- MedQA-USMLE JSONL: ``{question, options: {A: .., B: ..}, answer_idx}`` (4 or 5 options).
- MedMCQA: ``{question, opa, opb, opc, opd, cop}`` with ``cop`` 1-4 in the original JSON files
  and 0-3 in the Hugging Face parquet export.
- NLI (MedNLI, BioNLI): ``{sentence1, sentence2, gold_label}`` or ``{premise, hypothesis, label}``.
- NER (BC5CDR, NCBI-disease): CoNLL-style BIO (``token<TAB>tag`` lines, blank line between
  sentences; tags ``B-Type``/``I-Type``/``O`` or untyped ``B``/``I``/``O``), or span JSON lines
  ``{text, entities: [{start, end, type}]}``.
- Relation extraction (DDI-2013 as in BLUE): ``index, sentence, label`` TSV with a header, drugs
  masked as ``@DRUG$``, labels ``DDI-mechanism`` ... ``DDI-false``; or JSON lines.
- Multi-label classification (HoC): ``{text, labels}`` with a list or a ``;``-separated string.
- Summarisation pairs: ``{document|text|article|findings, summary|abstract|impression}``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.evaluation.metrics import normalize_answer
from neuroomics_bridge.io import read_jsonl, unreadable_table

__all__ = [
    "Example",
    "LETTERS",
    "read_records",
    "read_pubmedqa",
    "read_medqa",
    "read_medmcqa",
    "read_nli",
    "read_ner",
    "read_relations",
    "read_multilabel",
    "read_summaries",
]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


LETTERS = "ABCDEFGH"
"""The letters a multiple-choice item's options may carry (prompted, parsed and scored)."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One benchmark item.

    Attributes
    ----------
    id
        The item's id in its file (or where it sits there).
    text
        What the model reads (question, sentence, document).
    context
        A passage shown before it (an abstract, an NLI premise).
    options, answer
        Choice tasks have ``options`` and the correct one in ``answer``; summaries have the
        reference in ``answer``.
    answer_set
        The gold set of NER and multi-label tasks (entities as ``"type: span"``).
    answer_index
        The correct option's position where the file gives it (MedQA's ``answer_idx``,
        MedMCQA's ``cop``): two options may have the same text.
    """

    id: str
    text: str
    context: str = ""
    options: tuple[str, ...] = ()
    answer: str = ""
    answer_set: tuple[str, ...] = ()
    answer_index: int | None = None

    @property
    def correct_option(self) -> int:
        """Position of the correct option: :attr:`answer_index` where given, else the first
        option whose text is :attr:`answer`."""
        return self.options.index(self.answer) if self.answer_index is None else self.answer_index


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` pairs of a JSON, JSON-lines, CSV, TSV or parquet file, streamed.

    ``where`` is ``file:line`` or ``file[key]`` for error messages. A ``.json`` file may hold a
    list of records, an object of keyed records (the key is the ``id`` unless the record has one),
    or JSON lines; CSV and TSV values are read as strings.

    Raises
    ------
    MissingFileError
        When the file does not exist.
    DataError
        For another suffix, invalid JSON, or a record that is not an object.
    """
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"{file}: benchmark file does not exist")
    suffix = file.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        import pandas as pd

        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(file)
            else:
                tsv = suffix == ".tsv"  # never quoted: a sentence that opens with " must not swallow the next rows
                frame = pd.read_csv(file, sep="\t" if tsv else ",", dtype=str, keep_default_na=False,
                                    quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)  # fmt: skip
        except ValueError as err:  # not UTF-8, ragged rows, an empty or damaged file: all ValueErrors
            raise unreadable_table(file, err) from None
        for row, record in enumerate(frame.to_dict(orient="records")):
            yield (f"{file}[row {row}]" if suffix == ".parquet" else f"{file}:{row + 2}"), record  # line 1: header
        return
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{file}: expected a .json, .jsonl, .csv, .tsv or .parquet file, got {suffix or 'no suffix'}")
    if suffix == ".json":
        try:
            whole = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{file}: not UTF-8 text ({err})") from None
        except json.JSONDecodeError as err:
            if "Extra data" not in str(err):  # anything but JSON lines in a .json file
                raise DataError(f"{file}: not valid JSON ({err})") from None
        else:
            if isinstance(whole, list):
                yield from ((f"{file}[{i}]", _mapping(r, f"{file}[{i}]")) for i, r in enumerate(whole))
            elif isinstance(whole, dict) and whole and all(isinstance(r, dict) for r in whole.values()):
                yield from ((f"{file}[{k}]", {"id": k, **r}) for k, r in whole.items())  # keyed records (PubMedQA)
            elif isinstance(whole, dict):
                yield f"{file}:1", whole  # JSON lines holding one record
            else:
                raise DataError(f"{file}: expected a JSON list or object of records, got {type(whole).__name__}")
            return
    for number, record in read_jsonl(file):
        yield f"{file}:{number}", record


def _mapping(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _as_list(value: Any) -> list[Any] | None:
    """Lists as JSON gives them and as parquet does (numpy arrays); anything else is ``None``."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    return list(value) if isinstance(value, list | tuple) else None


def _text(record: Mapping[str, Any], where: str, keys: Sequence[str]) -> str:
    """The first of ``keys`` present as non-empty text."""
    for key in keys:
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    found = sorted(record)
    raise DataError(f"{where}: expected a text field {' or '.join(map(repr, keys))}; the record has {found}")


def _label(raw: Any, where: str, key: str, aliases: Mapping[str, str]) -> str:
    """``raw`` mapped onto the task's label set through ``aliases`` (normalised name -> label)."""
    label = aliases.get(normalize_answer(str(raw)))
    if label is None:
        raise DataError(f"{where}: {key} {raw!r} is not one of {sorted(set(aliases.values()))}")
    return label


def _checked_examples(examples: list[Example], file: Path) -> list[Example]:
    """``examples``, refused when there are none or two share an id: a k-shot prompt leaves out
    its own item by id, and comparisons pair two runs' items by id."""
    if not examples:
        raise DataError(f"{file}: no examples")
    first: dict[str, int] = {}
    for number, example in enumerate(examples, start=1):
        if example.id in first:
            raise DataError(
                f"{file}: items {first[example.id]} and {number} share the id {example.id!r}; expected one id per item"
            )
        first[example.id] = number
    return examples


def _item_id(record: Mapping[str, Any], where: str, path: str | os.PathLike[str], *keys: str) -> str:
    """The item's id: the first of ``keys`` (default ``"id"``) that the record has, else where
    it sits in its file, named by the file's name rather than the path it was read by (k-shot
    draws are seeded by ids, so they must not change with how a data folder is spelled)."""
    for key in keys or ("id",):
        if record.get(key) is not None:
            return str(record[key])
    return where.replace(str(Path(path)), Path(path).name, 1)


def read_pubmedqa(path: str | os.PathLike[str]) -> list[Example]:
    """PubMedQA: the question, its abstract's sentences as context, yes / no / maybe."""
    aliases = {name: name for name in ("yes", "no", "maybe")}
    examples = []
    for where, record in read_records(path):
        question = _text(record, where, ("QUESTION", "question"))
        contexts = record.get("CONTEXTS", record.get("context"))
        if isinstance(contexts, dict):  # Hugging Face export: {"contexts": [...], "labels": [...]}
            contexts = contexts.get("contexts")
        contexts = [contexts] if isinstance(contexts, str) else _as_list(contexts)
        if contexts is None or not all(isinstance(c, str) for c in contexts):
            raise DataError(f"{where}: expected 'CONTEXTS' (a list of sentences); the record has {sorted(record)}")
        decision = record.get("final_decision")
        if decision is None:
            raise DataError(f"{where}: expected 'final_decision' (yes, no or maybe); the record has {sorted(record)}")
        answer = _label(decision, where, "final_decision", aliases)
        item_id = _item_id(record, where, path, "id", "pubid")
        examples.append(Example(item_id, question, " ".join(contexts), ("yes", "no", "maybe"), answer))
    return _checked_examples(examples, Path(path))


def read_medqa(path: str | os.PathLike[str]) -> list[Example]:
    """MedQA-USMLE: a vignette, lettered options (4 or 5), the correct letter."""
    examples = []
    for where, record in read_records(path):
        question = _text(record, where, ("question",))
        options = record.get("options")
        if not isinstance(options, dict) or len(options) < 2:
            raise DataError(f"{where}: expected 'options' as {{'A': text, 'B': text, ...}}, got {options!r}")
        letters = sorted(options)
        if letters != [chr(ord("A") + i) for i in range(len(letters))]:
            raise DataError(f"{where}: option keys must be A, B, C...; got {letters}")
        if len(letters) > len(LETTERS):  # the prompt, the parser and the scorer know these letters only
            raise DataError(f"{where}: at most {len(LETTERS)} options ({LETTERS[0]}-{LETTERS[-1]}), got {len(letters)}")
        texts = tuple(str(options[letter]).strip() for letter in letters)
        empty = [letter for letter, option in zip(letters, texts, strict=True) if not option]
        if empty:  # an empty text would be the start of every answer
            raise DataError(f"{where}: option(s) {empty} have no text; expected each option's text")
        index = None
        if "answer_idx" in record:
            letter = str(record["answer_idx"]).strip()
            if letter not in options:
                raise DataError(f"{where}: answer_idx {letter!r} is not one of the options {letters}")
            index = letters.index(letter)
            answer = texts[index]
        else:
            answer = _text(record, where, ("answer",))
            if answer not in texts:
                raise DataError(f"{where}: answer {answer!r} is not one of the options")
        examples.append(Example(_item_id(record, where, path), question, "", texts, answer, answer_index=index))
    return _checked_examples(examples, Path(path))


def read_medmcqa(path: str | os.PathLike[str]) -> list[Example]:
    """MedMCQA: a question, options ``opa``-``opd``, the correct option ``cop``."""
    file = Path(path)
    first = 0 if file.suffix.lower() == ".parquet" else 1  # the Hugging Face export counts from 0
    examples = []
    for where, record in read_records(file):
        question = _text(record, where, ("question",))
        texts = tuple(_text(record, where, (key,)) for key in ("opa", "opb", "opc", "opd"))
        try:
            index = int(record["cop"]) - first
            if int(record["cop"]) < 0:
                raise ValueError("no answer")
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{where}: expected 'cop' (the correct option, {first}-{first + 3}); got {record.get('cop')!r} "
                "(MedMCQA's test split has no answers: evaluate on dev.json)"
            ) from None
        if not 0 <= index < 4:
            raise DataError(f"{where}: cop {record['cop']!r} is outside {first}-{first + 3} for {file.suffix} files")
        examples.append(Example(_item_id(record, where, file), question, "", texts, texts[index], answer_index=index))
    return _checked_examples(examples, file)


def read_nli(path: str | os.PathLike[str], *, labels: Mapping[str, str]) -> list[Example]:
    """Premise / hypothesis pairs: the hypothesis as ``text``, the premise as ``context``.

    Parameters
    ----------
    path
        The benchmark file.
    labels
        Each accepted label name (normalised) -> the task's label; the task's labels, in first-seen
        order, are the options.
    """
    options = tuple(dict.fromkeys(labels.values()))
    examples = []
    for where, record in read_records(path):
        premise = _text(record, where, ("sentence1", "premise"))
        hypothesis = _text(record, where, ("sentence2", "hypothesis"))
        key = "gold_label" if "gold_label" in record else "label"
        if key not in record:
            raise DataError(f"{where}: expected 'gold_label' or 'label'; the record has {sorted(record)}")
        answer = _label(record[key], where, key, labels)
        item_id = _item_id(record, where, path, "pairID", "id")
        examples.append(Example(item_id, hypothesis, premise, options, answer))
    return _checked_examples(examples, Path(path))


def read_ner(path: str | os.PathLike[str], *, default_type: str | None) -> list[Example]:
    """Sentences with their gold entities as ``"type: span"``.

    Parameters
    ----------
    path
        A CoNLL-style BIO file, or ``.json`` / ``.jsonl`` span records.
    default_type
        The type untyped BIO tags get (``None``: the task has several types, so untyped tags are
        an error).

    Raises
    ------
    MissingFileError
        When the file does not exist.
    DataError
        For a malformed line or tag, naming the file and line, or no sentences.
    """
    file = Path(path)
    if file.suffix.lower() in (".json", ".jsonl"):
        return _checked_examples(_read_entity_spans(file), file)
    examples, tokens, entities = [], [], []
    current: list[str] | None = None  # tokens of the entity being read
    kind = ""

    def close() -> None:
        nonlocal current
        if current:
            entities.append(f"{kind}: {' '.join(current)}")
        current = None

    if not file.is_file():
        raise MissingFileError(f"{file}: benchmark file does not exist")
    try:  # utf-8-sig: a byte-order mark must not become part of the first token
        lines = [*file.read_text(encoding="utf-8-sig").splitlines(), ""]  # the blank line closes the last sentence
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err})") from None
    start = 1
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("-DOCSTART-"):
            close()
            if tokens:
                examples.append(Example(f"{file.name}:{start}", " ".join(tokens), answer_set=tuple(entities)))
            tokens, entities, start = [], [], number + 1
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise DataError(f"{file}:{number}: expected 'token<TAB>tag' (BIO), got {line!r}")
        token, tag = parts[0], parts[-1].strip()
        if tag == "O":
            close()
        elif tag[:1] in ("B", "I") and (len(tag) == 1 or tag[1] == "-"):  # (an empty tag is an error below)
            tag_type = tag[2:] or default_type
            if tag_type is None:
                raise DataError(f"{file}:{number}: untyped tag {tag!r}, but this task has several entity types")
            if tag[0] == "B" or current is None or tag_type != kind:
                close()
                current, kind = [], tag_type
            current.append(token)
        else:
            raise DataError(f"{file}:{number}: tag {tag!r} is not O, B, I, B-<type> or I-<type>")
        tokens.append(token)
    return _checked_examples(examples, file)


def _read_entity_spans(file: Path) -> list[Example]:
    examples = []
    for where, record in read_records(file):
        text = _text(record, where, ("text", "sentence"))
        spans = record.get("entities")
        if not isinstance(spans, list):
            raise DataError(f"{where}: expected 'entities' as a list of {{start, end, type}}; got {spans!r}")
        entities = []
        for i, span in enumerate(spans):
            try:
                start, end, kind = int(span["start"]), int(span["end"]), str(span["type"])
            except (KeyError, TypeError, ValueError):
                raise DataError(
                    f"{where}: entities[{i}] needs integer 'start', 'end' and a 'type'; got {span!r}"
                ) from None
            if not 0 <= start < end <= len(text):
                raise DataError(f"{where}: entities[{i}] span {start}:{end} is outside the {len(text)}-character text")
            entities.append(f"{kind}: {text[start:end]}")
        examples.append(Example(_item_id(record, where, file), text, answer_set=tuple(entities)))
    return examples


def read_relations(path: str | os.PathLike[str], *, labels: Mapping[str, str]) -> list[Example]:
    """Relation classification of a sentence with masked arguments (DDI-2013 as in BLUE).

    ``labels`` maps each accepted label name (normalised) to the task's label, as in :func:`read_nli`.
    """
    options = tuple(dict.fromkeys(labels.values()))
    examples = []
    for where, record in read_records(path):
        sentence = _text(record, where, ("sentence", "text"))
        if "label" not in record:
            raise DataError(f"{where}: expected 'label'; the record has {sorted(record)}")
        answer = _label(record["label"], where, "label", labels)
        examples.append(Example(_item_id(record, where, path, "index", "id"), sentence, "", options, answer))
    return _checked_examples(examples, Path(path))


def read_multilabel(path: str | os.PathLike[str], *, labels: Sequence[str]) -> list[Example]:
    """Texts with a set of labels from ``labels`` (an empty set is allowed).

    Labels are matched after :func:`normalize_answer`; any other label is a :class:`DataError`.
    """
    known = {normalize_answer(label): label for label in labels}
    examples = []
    for where, record in read_records(path):
        text = _text(record, where, ("text", "sentence", "abstract"))
        raw = record.get("labels")
        raw = [part for part in raw.split(";") if part.strip()] if isinstance(raw, str) else _as_list(raw)
        if raw is None:
            raise DataError(f"{where}: expected 'labels' as a list or a ';'-separated string; got {raw!r}")
        gold = tuple(_label(label, where, "label", known) for label in raw)
        examples.append(Example(_item_id(record, where, path), text, answer_set=gold))
    return _checked_examples(examples, Path(path))


def read_summaries(path: str | os.PathLike[str]) -> list[Example]:
    """Document / reference-summary pairs."""
    examples = []
    for where, record in read_records(path):
        document = _text(record, where, ("document", "text", "article", "findings", "source"))
        summary = _text(record, where, ("summary", "abstract", "impression", "target"))
        examples.append(Example(_item_id(record, where, path), document, answer=summary))
    return _checked_examples(examples, Path(path))
