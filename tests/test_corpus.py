"""Corpora: reading every format, mixing by token weight, packing without losing a token."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from neuroomics_bridge.data.corpus import MixtureCorpus, pack, read_documents
from neuroomics_bridge.errors import DataError, MissingFileError


def test_documents_stream_from_text_jsonl_parquet_csv_and_folders(tmp_path) -> None:
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first document")
    (folder / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    pd.DataFrame({"text": ["fourth", "fifth"]}).to_parquet(folder / "sub" / "c.parquet")
    pd.DataFrame({"text": ["sixth"], "other": [1]}).to_csv(folder / "sub" / "d.csv", index=False)
    (folder / "ignored.bin").write_bytes(b"\0")
    (folder / "notes.txt").mkdir()  # a folder named like a file, and a hidden folder's copies, are not read
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("first document")
    assert list(read_documents(folder)) == ["first document", "second", "third", "fourth", "fifth", "sixth"]


def test_bad_sources_name_the_file_line_and_key(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="nowhere"):
        list(read_documents(tmp_path / "nowhere"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected an object with a string 'text' field"):
        list(read_documents(bad))
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_documents(bad))
    table = tmp_path / "t.parquet"
    pd.DataFrame({"body": ["x"]}).to_parquet(table)
    with pytest.raises(DataError, match=r"no column 'text'; columns are \['body'\]"):
        list(read_documents(table))
    latin1 = "Patient mit Demenz, \xe4ltere Frau.\n".encode("latin-1")
    damaged = {
        "note.txt": (latin1, r"note\.txt: not UTF-8 text"),
        "notes.jsonl": (b'{"text": "ok"}\n' + latin1, r"notes\.jsonl: not UTF-8 text"),
        "broken.parquet": (b"PAR1 not really", r"broken\.parquet: not a readable table"),
        "ragged.csv": (b"text,n\na,1\nb,2,3\n", r"ragged\.csv: not a readable table"),
    }
    for name, (content, message) in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            list(read_documents(tmp_path / name))


def test_mixture_token_shares_follow_the_weights_whatever_the_document_lengths() -> None:
    rng = np.random.default_rng(0)
    sources = {
        "biomedical": [" ".join(["word"] * int(n)) for n in rng.integers(200, 400, 50)],  # long documents
        "clinical": [" ".join(["note"] * int(n)) for n in rng.integers(5, 20, 30)],  # short ones
        "general": [" ".join(["text"] * int(n)) for n in rng.integers(30, 90, 40)],
    }
    corpus = MixtureCorpus(sources, {"biomedical": 15, "clinical": 1, "general": 4}, seed=0)
    stream = corpus.token_stream(str.split)
    while sum(corpus.stats.tokens.values()) < 200_000:
        next(stream)
    shares = corpus.stats.token_shares()
    assert shares["biomedical"] == pytest.approx(0.75, abs=0.02)
    assert shares["clinical"] == pytest.approx(0.05, abs=0.01)
    assert shares["general"] == pytest.approx(0.20, abs=0.02)
    assert corpus.stats.passes["clinical"] >= 1  # the small source was cycled (up-sampled)
    again = MixtureCorpus(sources, {"biomedical": 15, "clinical": 1, "general": 4}, seed=0).token_stream(str.split)
    first = MixtureCorpus(sources, {"biomedical": 15, "clinical": 1, "general": 4}, seed=0).token_stream(str.split)
    assert [next(again)[0] for _ in range(50)] == [next(first)[0] for _ in range(50)]  # seeded


def test_mixture_scrubs_phi_in_the_named_sources_and_counts_it() -> None:
    sources = {"clinical": ["Seen by Dr. Ann Lee on 03/04/2021."], "general": ["Dr. Who aired on 03/04/2021."]}
    corpus = MixtureCorpus(sources, {"clinical": 1, "general": 1}, scrub={"clinical"}, seed=1)
    drawn = {}
    stream = corpus.token_stream(str.split)
    while len(drawn) < 2:
        name, ids = next(stream)
        drawn[name] = " ".join(ids)
    assert drawn["clinical"] == "Seen by Dr. [NAME] on [DATE]." and "03/04/2021" in drawn["general"]
    assert corpus.stats.phi["clinical"]["NAME"] >= 1 and not corpus.stats.phi["general"]


def test_a_document_of_an_in_memory_source_that_is_not_text_is_named() -> None:
    notes = pd.DataFrame({"text": ["Tremor at rest.", None]}).text.tolist()  # a column with a missing note
    corpus = MixtureCorpus({"clinical": notes}, {"clinical": 1}, seed=0)
    with pytest.raises(DataError, match=r"source 'clinical': document 1 is None \(NoneType\); expected text"):
        list(itertools.islice(corpus.token_stream(str.split), 5))  # before: AttributeError on .strip()


def test_blank_documents_of_an_in_memory_source_are_skipped_as_in_files() -> None:
    corpus = MixtureCorpus({"a": ["", "  ", "hello world"], "b": ["x y z"]}, {"a": 1, "b": 1}, seed=0)
    drawn = list(itertools.islice(corpus.token_stream(str.split), 20))
    assert {name for name, _ in drawn} == {"a", "b"} and all(tokens for _, tokens in drawn)
    with pytest.raises(DataError, match="source 'a' has no documents"):
        list(
            itertools.islice(MixtureCorpus({"a": ["", "\n"], "b": ["x"]}, {"a": 1, "b": 1}).token_stream(str.split), 50)
        )


def test_mixture_rejects_weights_that_do_not_match_the_sources() -> None:
    with pytest.raises(DataError, match="must name exactly the sources"):
        MixtureCorpus({"a": ["x"]}, {"b": 1.0})
    for weight in (0.0, "15", None, True):  # a number in quotes, a missing one, a flag: none is a weight
        with pytest.raises(DataError, match="must be positive numbers"):
            MixtureCorpus({"a": ["x"]}, {"a": weight})


def test_a_csv_of_notes_over_several_lines_reads_one_document_per_note(tmp_path) -> None:
    notes = [f"Note {i}.\nLine two {i} " + "x" * 200 + "\nEnd." for i in range(6000)]  # 1.5 MB: several pyarrow blocks
    pd.DataFrame({"id": range(6000), "text": notes}).to_csv(tmp_path / "notes.csv", index=False)
    assert list(read_documents(tmp_path / "notes.csv")) == notes


@pytest.mark.parametrize("block_size", [2, 7, 64])
def test_packing_round_trips_every_token_and_restarts_positions(block_size: int) -> None:
    rng = np.random.default_rng(block_size)
    documents = [list(rng.integers(3, 100, int(n))) for n in rng.integers(1, 40, 25)]
    blocks = list(pack(documents, block_size, eos_id=2))
    flat = [t for b in blocks for t in b.input_ids]
    assert flat == [t for d in documents for t in [*d, 2]]
    assert all(len(b.input_ids) == block_size for b in blocks[:-1]) and 0 < len(blocks[-1].input_ids) <= block_size
    for block in blocks:
        assert block.position_ids[0] == 0 and len(block.position_ids) == len(block.input_ids)
        for i in range(1, len(block.input_ids)):  # a new document starts right after each EOS
            expected = 0 if block.input_ids[i - 1] == 2 else block.position_ids[i - 1] + 1
            assert block.position_ids[i] == expected


def test_packed_documents_do_not_attend_to_each_other(tiny_backbone) -> None:
    tokenizer = tiny_backbone.tokenizer
    texts = ["The patient presents with resting tremor.", "MRI shows hippocampal atrophy."]
    documents = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    (block,) = pack(documents, 1000, tokenizer.eos_token_id)
    model = tiny_backbone.model.float()
    with torch.no_grad():
        ids, positions = torch.tensor([block.input_ids]), torch.tensor([block.position_ids])
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        second = model(input_ids=torch.tensor([[*documents[1], tokenizer.eos_token_id]]), use_cache=False).logits[0]
    torch.testing.assert_close(packed[len(documents[0]) + 1 :], second, atol=1e-4, rtol=1e-4)
