"""EmbeddingIndex (faiss) against brute force, and the evaluation metrics against hand values."""

from __future__ import annotations

import numpy as np
import pytest

from neuroomics_bridge import DataError, MissingFileError
from neuroomics_bridge.evaluation import classification_metrics, recall_at_k, zero_shot_accuracy
from neuroomics_bridge.retrieval import EmbeddingIndex


def vectors(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def brute_force_cosine(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    keys = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :k]


def test_flat_cosine_search_equals_brute_force_and_returns_own_ids() -> None:
    keys, queries = vectors(500), vectors(20, seed=1)
    ids = [f"sub-{i:03d}" for i in range(500)]
    result = EmbeddingIndex.build(keys, ids).search(queries, k=5)
    expected = brute_force_cosine(keys, queries, 5)
    assert result.ids == [[ids[j] for j in row] for row in expected]
    assert result.scores.shape == (20, 5) and np.all(np.diff(result.scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_other_metrics_rank_like_their_formula(metric: str) -> None:
    keys, queries = vectors(200), vectors(5, seed=2)
    scores = queries @ keys.T if metric == "ip" else -((queries[:, None] - keys[None]) ** 2).sum(-1)
    result = EmbeddingIndex.build(keys, metric=metric).search(queries, k=3)
    assert result.ids == [[str(j) for j in row] for row in np.argsort(-scores, axis=1)[:, :3]]


def test_ivf_index_with_enough_probes_finds_the_exact_neighbours() -> None:
    keys, queries = vectors(4000), vectors(10, seed=3)
    index = EmbeddingIndex.build(keys, factory="IVF16,Flat")
    assert index.search(queries, k=5, nprobe=16).ids == [
        [str(j) for j in row] for row in brute_force_cosine(keys, queries, 5)
    ]


def test_hnsw_recall_grows_with_ef_search() -> None:
    keys, queries = vectors(4000), vectors(50, seed=4)
    truth = [set(map(str, row)) for row in brute_force_cosine(keys, queries, 10)]
    index = EmbeddingIndex.build(keys, factory="HNSW8")

    def recall(ef: int) -> float:
        found = index.search(queries, k=10, ef_search=ef).ids
        return float(np.mean([len(t & set(f)) / 10 for t, f in zip(truth, found, strict=True)]))

    low, high = recall(10), recall(400)
    assert high >= 0.99 and high > low, (low, high)


def test_save_and_load_keep_results(tmp_path) -> None:
    index = EmbeddingIndex.build(vectors(100), [f"s{i}" for i in range(100)])
    index.save(tmp_path / "index")
    restored = EmbeddingIndex.load(tmp_path / "index")
    queries = vectors(4, seed=4)
    assert restored.search(queries, 3).ids == index.search(queries, 3).ids and len(restored) == 100
    with pytest.raises(MissingFileError, match=r"expected index\.faiss and ids\.json"):
        EmbeddingIndex.load(tmp_path / "nowhere")


def test_damaged_saved_indexes_and_reference_sets_are_named(tmp_path) -> None:
    import json

    from neuroomics_bridge import CorruptFileError
    from neuroomics_bridge.retrieval import ReferenceSet

    folder = EmbeddingIndex.build(vectors(10), [f"s{i}" for i in range(10)]).save(tmp_path / "index")
    meta = json.loads((folder / "ids.json").read_text())
    (folder / "ids.json").write_text(json.dumps({**meta, "ids": meta["ids"][:9]}))
    with pytest.raises(CorruptFileError, match=r"ids\.json: expected .* and 10 ids \(index\.faiss\), got .* and 9"):
        EmbeddingIndex.load(folder)
    (folder / "ids.json").write_text(json.dumps({"ids": meta["ids"], "format": meta["format"]}))
    with pytest.raises(CorruptFileError, match=r"ids\.json: expected 'metric' to be a str, got nothing"):
        EmbeddingIndex.load(folder)
    (folder / "ids.json").write_text(json.dumps(meta))
    (folder / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(CorruptFileError, match=r"index\.faiss: unreadable index"):
        EmbeddingIndex.load(folder)
    with pytest.raises(MissingFileError, match=r"references\.json: missing; not a saved ReferenceSet"):
        ReferenceSet.load(tmp_path / "index")

    ids = [f"s{i}" for i in range(10)]
    index = EmbeddingIndex.build(vectors(10), ids)
    refs = ReferenceSet(ids, [f"report {i}" for i in ids], ["a"] * 10, {"gene": index}).save(tmp_path / "refs")
    table = json.loads((refs / "references.json").read_text())
    damaged = {
        "[1, 2]": r"expected a JSON object, got list",
        "{not json": r"not valid JSON",
        json.dumps({**table, "labels": None}): r"expected 'labels' to be a list, got NoneType",
        json.dumps({**table, "reports": table["reports"][:9]}): r"one report and label per subject id",
        json.dumps({key: values[:9] for key, values in table.items()}): r"gene: indexes subjects \['s9'\]",
    }
    for text, message in damaged.items():
        (refs / "references.json").write_text(text)
        with pytest.raises(CorruptFileError, match=message):
            ReferenceSet.load(refs)


def test_cross_modal_search_finds_the_same_subject() -> None:
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(50, 8))
    gene, brain = latent + 0.05 * rng.normal(size=(50, 8)), latent + 0.05 * rng.normal(size=(50, 8))
    ids = [f"sub-{i}" for i in range(50)]
    result = EmbeddingIndex.build(gene, ids).search(brain, k=1)
    assert [row[0] for row in result.ids] == ids


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(DataError, match="factory 'NotAnIndex' is not valid"):
        EmbeddingIndex.build(vectors(10), factory="NotAnIndex")
    bad = vectors(10)
    bad[3, 1] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        EmbeddingIndex.build(bad)
    with pytest.raises(DataError, match="expected dimension 16, got 8"):
        EmbeddingIndex.build(vectors(10)).search(vectors(2, d=8))
    with pytest.raises(DataError, match="k: expected at least 1 neighbour, got 0"):
        EmbeddingIndex.build(vectors(10)).search(vectors(2), k=0)
    with pytest.raises(DataError, match="nprobe=4: not a search parameter of a 'Flat' index"):
        EmbeddingIndex.build(vectors(10)).search(vectors(2), nprobe=4)
    with pytest.raises(DataError, match="'IVF16,Flat' cannot be trained on 5 vectors"):
        EmbeddingIndex.build(vectors(5), factory="IVF16,Flat")
    with pytest.raises(DataError, match="expected at least one subject"):
        classification_metrics(np.zeros((0, 2)), [], ["a", "b"])
    with pytest.raises(DataError, match=r"expected finite scores; rows \[1\]"):
        classification_metrics(np.array([[0.5, 0.5], [np.nan, 1.0]]), ["a", "b"], ["a", "b"])


def test_an_approximate_search_that_finds_fewer_than_k_marks_the_empty_places() -> None:
    index = EmbeddingIndex.build(vectors(40), factory="IVF2,Flat")
    found = index.search(vectors(3, seed=1), k=40, nprobe=1)  # one of two lists: about half the items
    assert found.scores.shape == (3, 40)
    for ids, scores in zip(found.ids, found.scores, strict=True):
        assert 0 < len(ids) < 40 and np.isfinite(scores[: len(ids)]).all() and np.isnan(scores[len(ids) :]).all()


def test_recall_at_k_counts_own_key_ranks() -> None:
    keys = np.eye(4)
    queries = np.array([[1.0, 0, 0, 0], [0.9, 1.0, 0, 0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])
    # ranks of own key: q0 -> 0; q1 -> 0; q2 -> key2 scores 0, key3 scores 1 -> rank 1 (ties at 0 not counted); q3 -> 0
    assert recall_at_k(queries, keys, 1) == pytest.approx(0.75)
    assert recall_at_k(queries, keys, 2) == pytest.approx(1.0)


def test_classification_metrics_match_hand_computed_values() -> None:
    classes = ["a", "b", "c"]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    labels = ["a", "b", "b", "c"]
    metrics = classification_metrics(probabilities, labels, classes)
    assert metrics["accuracy"] == pytest.approx(0.75)
    # per class F1: a: p=1/2, r=1 -> 2/3; b: p=1, r=1/2 -> 2/3; c: 1 -> macro (2/3 + 2/3 + 1) / 3
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    # one-vs-rest: each class's positives outscore all its negatives (a: 0.7 > 0.6; b: 0.3 > 0.2; c: 0.7 > 0.1)
    assert metrics["auroc"] == pytest.approx(1.0)
    assert zero_shot_accuracy(probabilities, labels, classes) == pytest.approx(0.75)
    with pytest.raises(DataError, match=r"labels \['z'\] are not among the classes"):
        classification_metrics(probabilities, ["a", "b", "z", "c"], classes)
