"""Text corpora for continual pretraining: streamed sources, a weighted mixture, and packing.

Me-LLaMA mixes biomedical literature, clinical notes and general text 15:1:4 *by tokens*.
:class:`MixtureCorpus` streams documents from named sources (text files, JSONL, Parquet/CSV, or
folders of them; each source restarts when exhausted, so a small source is up-sampled) and picks
the next source at random, seeded, with probability proportional to its weight divided by its
running mean document length, so that token shares converge on the weights whatever the
sources' document lengths. Clinical sources can be PHI-scrubbed before tokenisation.
:func:`pack` concatenates tokenised documents, each followed by EOS, into fixed-length blocks;
position ids restart at every document start, which transformers turns into a block-diagonal
causal mask, so packed documents do not attend to each other.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from neuroomics_bridge.data.phi import scrub_phi
from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.io import read_jsonl, unreadable_table
from neuroomics_bridge.yamlconfig import is_number

__all__ = ["MixtureCorpus", "PackedBlock", "checked_texts", "pack", "read_documents"]

DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet", ".csv")


def checked_texts(documents: Iterable[Any], where: str = "an in-memory corpus source") -> Iterator[str]:
    """``documents`` one by one, refused with :class:`DataError` at the first that is not text
    (a column's ``None`` or ``NaN`` would otherwise fail deep inside tokenisation)."""
    for number, text in enumerate(documents):
        if not isinstance(text, str):
            raise DataError(f"{where}: document {number} is {text!r} ({type(text).__name__}); expected text")
        yield text


def _corpus_files(folder: Path) -> Iterator[Path]:
    """The corpus files under ``folder``: files (not folders named like one) of a known suffix,
    outside hidden folders (``.ipynb_checkpoints`` holds copies of the notebooks' data)."""
    for path in folder.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.suffix in DOCUMENT_SUFFIXES and path.is_file() and not hidden:
            yield path


def read_documents(path: str | Path, *, text_field: str = "text") -> Iterator[str]:
    """Stream the documents of a file or folder, lazily.

    Empty documents are skipped.

    Parameters
    ----------
    path
        ``.txt``/``.md``: the whole file is one document; ``.jsonl``: one JSON object per line,
        its ``text_field``; ``.parquet``/``.csv``: the ``text_field`` column, read in batches; a
        folder: every such file below it, in sorted order.
    text_field
        The JSON field or table column holding the text.

    Raises
    ------
    MissingFileError
        When ``path`` does not exist.
    DataError
        For a folder without corpus files, an unsupported suffix, a missing field or column, or
        a JSONL line that is not an object with a string ``text_field``.
    """
    source = Path(path)
    if not source.exists():
        raise MissingFileError(f"{source}: corpus source does not exist")
    files = sorted(_corpus_files(source)) if source.is_dir() else [source]
    if source.is_dir() and not files:
        raise DataError(f"{source}: no corpus files ({', '.join(DOCUMENT_SUFFIXES)}) in this folder")
    for file in files:
        for text in _read_file(file, text_field):
            if text.strip():
                yield text


def _read_file(file: Path, text_field: str) -> Iterator[str]:
    """The documents of one file; :class:`DataError` naming it when it is not UTF-8 text or not a
    readable table."""
    import pyarrow as pa

    try:
        yield from _documents(file, text_field)
    except UnicodeDecodeError as err:
        raise DataError(f"{file}: not UTF-8 text ({err})") from None
    except pa.ArrowInvalid as err:
        raise unreadable_table(file, err) from None


def _documents(file: Path, text_field: str) -> Iterator[str]:
    if file.suffix in (".txt", ".md"):
        yield file.read_text(encoding="utf-8")
    elif file.suffix == ".jsonl":
        for number, record in read_jsonl(file):
            if not isinstance(record.get(text_field), str):
                raise DataError(f"{file}:{number}: expected an object with a string {text_field!r} field")
            yield record[text_field]
    elif file.suffix in (".parquet", ".csv"):
        yield from _read_table(file, text_field)
    else:
        raise DataError(f"{file}: expected one of {', '.join(DOCUMENT_SUFFIXES)}, got {file.suffix or 'no suffix'!r}")


def _read_table(file: Path, text_field: str) -> Iterator[str]:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if file.suffix == ".parquet":
        table = pq.ParquetFile(file)
        if text_field not in table.schema_arrow.names:
            raise DataError(f"{file}: no column {text_field!r}; columns are {table.schema_arrow.names}")
        batches = table.iter_batches(columns=[text_field], batch_size=1024)
    else:
        # quoted notes span lines (what pandas' to_csv writes): pyarrow splits them at block edges otherwise
        reader = pa_csv.open_csv(file, parse_options=pa_csv.ParseOptions(newlines_in_values=True))
        if text_field not in reader.schema.names:
            raise DataError(f"{file}: no column {text_field!r}; columns are {reader.schema.names}")
        batches = reader
    for batch in batches:
        yield from (text for text in batch.column(text_field).to_pylist() if isinstance(text, str))


Source = str | Path | Sequence[str]


class MixtureCorpus:
    """Named document sources mixed by token weight, seeded, with per-source accounting.

    :meth:`token_stream` yields ``(source, token ids)`` forever; ``stats`` holds documents,
    tokens and PHI replacements per source.

    Parameters
    ----------
    sources
        Name -> a path (file or folder, see :func:`read_documents`) or an in-memory list of
        documents.
    weights
        The same names -> positive numbers (any scale: 15, 1, 4).
    seed
        Seeds the choice of source.
    scrub
        Sources (e.g. ``{"clinical"}``) PHI-scrubbed (:func:`scrub_phi`) before they are counted
        or tokenised.
    text_field
        Passed to :func:`read_documents`.

    Raises
    ------
    DataError
        When ``weights`` names other sources, a weight is not positive, or ``scrub`` names an
        unknown source.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        weights: Mapping[str, float],
        *,
        seed: int = 0,
        scrub: Collection[str] = (),
        text_field: str = "text",
    ) -> None:
        if set(sources) != set(weights):
            raise DataError(f"MixtureCorpus: weights {sorted(weights)} must name exactly the sources {sorted(sources)}")
        bad = {name: w for name, w in weights.items() if not (is_number(w) and np.isfinite(w) and w > 0)}
        if bad:
            raise DataError(f"MixtureCorpus: weights must be positive numbers, got {bad}")
        unknown = set(scrub) - set(sources)
        if unknown:
            raise DataError(f"MixtureCorpus: scrub names unknown sources {sorted(unknown)}")
        self.sources = dict(sources)
        self.names = list(sources)
        total = sum(weights.values())
        self.weights = {name: weights[name] / total for name in self.names}
        self.seed = seed
        self.scrub = set(scrub)
        self.text_field = text_field
        self.stats = CorpusStats.empty(self.names)

    def _cycle(self, name: str) -> Iterator[str]:
        source = self.sources[name]
        while True:
            documents = (
                checked_texts(source, f"MixtureCorpus source {name!r}")
                if not isinstance(source, str | Path)
                else read_documents(source, text_field=self.text_field)
            )
            empty = True
            for text in documents:
                if not text.strip():  # as read_documents skips blank lines: no tokens to draw from
                    continue
                empty = False
                yield text
            if empty:
                raise DataError(f"MixtureCorpus: source {name!r} has no documents")
            self.stats.passes[name] += 1

    def token_stream(self, tokenize: Callable[[str], list[int]]) -> Iterator[tuple[str, list[int]]]:
        """``(source, token ids)`` forever, sources chosen so token shares follow the weights.

        Each source is picked with probability proportional to its weight over its running mean
        document length; ``stats`` restarts with each call.

        Parameters
        ----------
        tokenize
            Text -> token ids.

        Raises
        ------
        DataError
            When a source has no documents.
        """
        rng = np.random.default_rng(self.seed)
        streams = {name: self._cycle(name) for name in self.names}
        self.stats = CorpusStats.empty(self.names)
        while True:
            mean_length = np.array(
                [self.stats.tokens[n] / self.stats.documents[n] if self.stats.documents[n] else 1.0 for n in self.names]
            )
            p = np.array([self.weights[n] for n in self.names]) / np.maximum(mean_length, 1.0)
            name = self.names[rng.choice(len(self.names), p=p / p.sum())]
            text = next(streams[name])
            if name in self.scrub:
                scrubbed = scrub_phi(text)
                text = scrubbed.text
                self.stats.phi[name].update(scrubbed.counts)
            ids = tokenize(text)
            self.stats.documents[name] += 1
            self.stats.tokens[name] += len(ids)
            yield name, ids


@dataclasses.dataclass
class CorpusStats:
    """Per-source documents and tokens drawn, full passes over each source, PHI replacements."""

    documents: Counter[str]
    tokens: Counter[str]
    passes: Counter[str]
    phi: dict[str, Counter[str]]

    @classmethod
    def empty(cls, names: Iterable[str]) -> CorpusStats:
        """Zero counts for the sources ``names``."""
        names = list(names)
        return cls(
            Counter(dict.fromkeys(names, 0)), Counter(dict.fromkeys(names, 0)), Counter(), {n: Counter() for n in names}
        )

    def token_shares(self) -> dict[str, float]:
        """Each source's fraction of the tokens drawn (all 0 before any)."""
        total = sum(self.tokens.values()) or 1
        return {name: count / total for name, count in self.tokens.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counts, token shares and the PHI replacements of scrubbed sources."""
        return {
            "documents": dict(self.documents),
            "tokens": dict(self.tokens),
            "token_shares": self.token_shares(),
            "passes": dict(self.passes),
            "phi_replaced": {name: dict(counts) for name, counts in self.phi.items() if counts},
        }


@dataclasses.dataclass
class PackedBlock:
    """One training block: token ids and position ids that restart at each document start."""

    input_ids: list[int]
    position_ids: list[int]


def pack(documents: Iterable[list[int]], block_size: int, eos_id: int) -> Iterator[PackedBlock]:
    """Concatenate tokenised documents, each followed by ``eos_id``, into fixed-length blocks.

    No token is lost or repeated: the blocks' ids, concatenated, are the documents with their
    EOS separators. A document cut at a block boundary continues at position 0 of the next
    block (it cannot see its first part).

    Parameters
    ----------
    documents
        Token ids of each document.
    block_size
        Tokens per block (at least 2); the last block may be shorter.
    eos_id
        The separator appended to every document.

    Raises
    ------
    DataError
        When ``block_size < 2``.
    """
    if block_size < 2:
        raise DataError(f"pack: block_size must be at least 2, got {block_size}")
    ids: list[int] = []
    positions: list[int] = []
    for document in documents:
        piece = [*document, eos_id]
        offset = 0
        while offset < len(piece):  # a segment starts a document or a block: position 0 either way
            take = min(block_size - len(ids), len(piece) - offset)
            ids += piece[offset : offset + take]
            positions += range(take)
            offset += take
            if len(ids) == block_size:
                yield PackedBlock(ids, positions)
                ids, positions = [], []
    if ids:
        yield PackedBlock(ids, positions)
