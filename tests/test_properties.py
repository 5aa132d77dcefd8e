"""Property tests (hypothesis): bad counts always rejected with the key named, gene order never
matters, splits always disjoint, complete and stable."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroomics_bridge import Cohort, DataError, GeneEncoder

N_CELLS, N_GENES = 40, 60
PROFILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def counts(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    data = ad.AnnData(rng.poisson(rng.gamma(2.0, 1.0, N_GENES), size=(N_CELLS, N_GENES)).astype(np.float32))
    data.var_names = [f"GENE{i}" for i in range(N_GENES)]
    data.obs_names = [f"cell{i}" for i in range(N_CELLS)]
    return data


@pytest.fixture(scope="module")
def fitted() -> GeneEncoder:
    return GeneEncoder(n_components=5, n_top_genes=30).fit(counts())


@PROFILE
@given(
    row=st.integers(0, N_CELLS - 1),
    col=st.integers(0, N_GENES - 1),
    value=st.sampled_from([np.nan, np.inf, -np.inf, -1.0, -0.5]),
    layer=st.booleans(),
)
def test_bad_counts_are_always_rejected_naming_the_key(row: int, col: int, value: float, layer: bool) -> None:
    data = counts()
    matrix = data.X.copy()
    matrix[row, col] = value
    if layer:
        data.layers["counts"] = matrix
        encoder, key = GeneEncoder(n_components=5, n_top_genes=30, layer="counts"), "layers['counts']"
    else:
        data.X = matrix
        encoder, key = GeneEncoder(n_components=5, n_top_genes=30), "X"
    with pytest.raises(DataError, match=key.replace("[", r"\[").replace("]", r"\]")):
        encoder.fit(data)


@PROFILE
@given(order=st.permutations(list(range(N_GENES))), seed=st.integers(1, 50))
def test_gene_order_never_changes_the_vectors(fitted: GeneEncoder, order: list[int], seed: int) -> None:
    data = counts(seed)
    np.testing.assert_allclose(fitted.transform(data[:, order].copy()), fitted.transform(data), rtol=1e-5, atol=1e-5)


@PROFILE
@given(
    n=st.integers(3, 80),
    seed=st.integers(0, 10**6),
    n_labels=st.integers(1, 4),
)
@pytest.mark.filterwarnings("ignore:split. the:UserWarning")  # small labels may round a fold away; said elsewhere
def test_splits_are_disjoint_complete_deterministic_and_stable(n: int, seed: int, n_labels: int) -> None:
    def cohort(size: int) -> Cohort:
        ids = [f"s{i}" for i in range(size)]
        return Cohort(subject_ids=ids, labels=[f"l{i % n_labels}" for i in range(size)], reports=["r"] * size)

    split = cohort(n).split(seed=seed)
    folds = [set(split.train.subject_ids), set(split.val.subject_ids), set(split.test.subject_ids)]
    assert not (folds[0] & folds[1] or folds[0] & folds[2] or folds[1] & folds[2])
    assert set().union(*folds) == set(cohort(n).subject_ids)
    again = cohort(n).split(seed=seed)
    assert again.train.subject_ids == split.train.subject_ids and again.test.subject_ids == split.test.subject_ids
    # Stable: folds depend on the subjects (hashed ids), not on the order the table lists them in.
    order = np.random.default_rng(seed).permutation(n)
    base = cohort(n)
    shuffled = Cohort(
        subject_ids=[base.subject_ids[i] for i in order], labels=[base.labels[i] for i in order], reports=["r"] * n
    ).split(seed=seed)
    assert set(shuffled.train.subject_ids) == folds[0] and set(shuffled.test.subject_ids) == folds[2]
