"""GeneEncoder on real PBMCs (scanpy's pbmc68k_reduced) and on synthetic counts."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from sklearn.base import clone

from neuroomics_bridge import CorruptFileError, DataError
from neuroomics_bridge.encoders import GeneEncoder, Residualizer


@pytest.fixture(scope="module")
def fitted(pbmc) -> tuple[GeneEncoder, np.ndarray]:
    encoder = GeneEncoder(n_components=20, n_top_genes=300)
    return encoder, encoder.fit_transform(pbmc)


def test_fit_transform_equals_scanpys_own_pca(pbmc, fitted) -> None:
    encoder, embedding = fitted
    reference = pbmc.copy()
    sc.pp.highly_variable_genes(reference, n_top_genes=300, flavor="seurat")
    reference = reference[:, reference.var["highly_variable"].to_numpy()].copy()
    reference.X = reference.X.toarray()
    sc.pp.scale(reference, max_value=10)
    sc.pp.pca(reference, n_comps=20, random_state=0)
    assert embedding.shape == (700, 20) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, reference.obsm["X_pca"], atol=5e-4)
    assert encoder.input_kind_ == "log" and encoder.id_type_ == "symbol"


def test_gene_order_does_not_change_embedding(pbmc, fitted) -> None:
    encoder, embedding = fitted
    shuffled = pbmc[:, np.random.default_rng(0).permutation(pbmc.n_vars)].copy()
    np.testing.assert_array_equal(encoder.transform(shuffled), embedding)


def test_transform_never_refits(pbmc, fitted) -> None:
    encoder, _ = fitted
    before = encoder.components_.copy()
    encoder.transform(pbmc[:50])
    np.testing.assert_array_equal(encoder.components_, before)


def test_missing_genes_are_zero_filled_with_a_warning(pbmc, fitted) -> None:
    encoder, _ = fitted
    dropped = encoder.genes_[:15]
    partial = pbmc[:, ~pbmc.var_names.isin(dropped)].copy()
    with pytest.warns(UserWarning, match=r"15 of 300 encoder genes \(5\.0%\) are absent from the data; zero-filled"):
        embedding = encoder.transform(partial)
    zeroed = pbmc.X.toarray()
    zeroed[:, pbmc.var_names.isin(dropped)] = 0
    np.testing.assert_allclose(embedding, encoder.transform(ad.AnnData(zeroed, var=pbmc.var)), atol=1e-5)


def test_too_many_missing_genes_is_an_error(pbmc, fitted) -> None:
    encoder, _ = fitted
    partial = pbmc[:, ~pbmc.var_names.isin(encoder.genes_[:100])].copy()
    with pytest.raises(DataError, match=r"100 of 300 encoder genes \(33\.3%\) .* max_missing_fraction=0\.1"):
        encoder.transform(partial)


def test_duplicated_genes_are_named(pbmc) -> None:
    names = list(pbmc.var_names)
    names[5] = names[0]
    duplicated = ad.AnnData(pbmc.X.copy(), var={"x": np.zeros(pbmc.n_vars)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        duplicated.var_names = names
    with pytest.raises(DataError, match=rf"duplicated gene\(s\): \['{names[0]}'\]"):
        GeneEncoder().fit(duplicated)


def test_ensembl_ids_against_symbols_are_explained(pbmc, fitted) -> None:
    encoder, _ = fitted
    ensembl = pbmc.copy()
    ensembl.var_names = [f"ENSG{i:011d}" for i in range(pbmc.n_vars)]
    with pytest.raises(DataError, match=r"look like ensembl IDs .* fitted on symbol IDs"):
        encoder.transform(ensembl)


@pytest.mark.parametrize(
    ("layer", "bad_value", "message"),
    [
        (None, np.nan, r"X contains 1 NaN or infinite value"),
        ("counts", np.inf, r"layers\['counts'\] contains 1 NaN or infinite value"),
        ("counts", -3.0, r"layers\['counts'\] contains negative values"),
    ],
)
def test_bad_values_name_the_key(pbmc, layer, bad_value, message) -> None:
    data = pbmc.copy()
    matrix = data.X.toarray()
    matrix[2, 3] = bad_value
    if layer is None:
        data.X = matrix
    else:
        data.layers[layer] = matrix
    with pytest.raises(DataError, match=message):
        GeneEncoder(layer=layer).fit(data)


def test_scaled_data_is_refused_with_a_hint() -> None:
    scaled = sc.datasets.pbmc68k_reduced()  # .X is z-scored: negative values
    with pytest.raises(DataError, match=r"X contains negative values .* adata\.raw\.to_adata\(\)"):
        GeneEncoder().fit(scaled)


def test_empty_anndata_is_refused() -> None:
    with pytest.raises(DataError, match=r"AnnData is empty: 0 observations x 5 genes"):
        GeneEncoder().fit(ad.AnnData(np.zeros((0, 5), dtype=np.float32)))


def test_anndata_without_an_expression_matrix_is_refused_naming_its_layers() -> None:
    annotations_only = ad.AnnData(obs=pd.DataFrame(index=["c0", "c1", "c2"]), var=pd.DataFrame(index=["A", "B"]))
    annotations_only.layers["counts"] = np.array([[1, 4], [3, 0], [2, 5]], dtype=np.float32)
    with pytest.raises(DataError, match=r"X is None: expected an expression matrix; available layers: \['counts'\]"):
        GeneEncoder().fit(annotations_only)
    assert GeneEncoder(n_components=1, layer="counts").fit(annotations_only).input_kind_ == "counts"


def test_a_constant_gene_changes_nothing_and_identical_rows_are_refused(pbmc) -> None:
    from scipy.spatial.distance import pdist

    cells = pbmc[:200, :40].copy()
    cells.X = np.asarray(cells.X.toarray(), dtype=np.float32)
    with_constant = ad.concat([cells, ad.AnnData(np.full((200, 1), 7.0, np.float32), obs=cells.obs[[]])], axis=1)
    with_constant.var_names = [*cells.var_names, "CONSTANT"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # scanpy's sqrt of a variance rounded below 0 stays quiet
        embedding = GeneEncoder(n_components=5, n_top_genes=100).fit_transform(with_constant)
    plain = GeneEncoder(n_components=5, n_top_genes=100).fit_transform(cells)
    # the same space up to the sign of each component: the same distances between the cells
    np.testing.assert_allclose(pdist(embedding), pdist(plain), rtol=1e-3, atol=1e-3)
    with pytest.raises(DataError, match=r"no gene varies across the 200 rows"):
        GeneEncoder(n_components=5).fit(ad.AnnData(np.tile(cells.X[:1], (200, 1))))


def test_raw_counts_are_normalised_and_logged_like_scanpy(small_cohort) -> None:
    cells = small_cohort.genes
    encoder = GeneEncoder(n_components=8, n_top_genes=200).fit(cells)
    assert encoder.input_kind_ == "counts"
    reference = cells.copy()
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    sc.pp.highly_variable_genes(reference, n_top_genes=200, flavor="seurat")
    reference = reference[:, reference.var["highly_variable"].to_numpy()].copy()
    reference.X = reference.X.toarray()
    sc.pp.scale(reference, max_value=10)
    sc.pp.pca(reference, n_comps=8, random_state=0)
    np.testing.assert_allclose(encoder.transform(cells), reference.obsm["X_pca"], atol=5e-4)


def test_counts_encoder_refuses_log_data(small_cohort, pbmc) -> None:
    encoder = GeneEncoder(n_components=4, n_top_genes=100).fit(small_cohort.genes)
    with pytest.raises(DataError, match="looks like 'log' data but the encoder was fitted on 'counts'"):
        encoder.transform(pbmc)


def test_cells_pool_to_one_row_per_subject(small_cohort) -> None:
    cells = small_cohort.genes.copy()
    encoder = GeneEncoder(n_components=5, n_top_genes=200, groupby="subject_id")
    embedding = encoder.fit_transform(cells, inplace=True)
    subjects = sorted(set(cells.obs["subject_id"].astype(str)))
    assert encoder.row_ids(cells) == subjects and embedding.shape == (len(subjects), 5)
    # Pseudobulk: a subject's row equals encoding the summed counts of its cells.
    first = cells[cells.obs["subject_id"] == subjects[0]]
    summed = ad.AnnData(sp.csr_matrix(first.X.sum(axis=0)), var=cells.var)
    summed.obs["subject_id"] = [subjects[0]]
    np.testing.assert_allclose(encoder.transform(summed)[0], embedding[0], atol=1e-5)
    # scverse-style outputs: each cell carries its subject's vector; parameters in uns.
    np.testing.assert_array_equal(
        cells.obsm["X_nob_gene"][0], embedding[subjects.index(cells.obs["subject_id"].iloc[0])]
    )
    assert list(cells.uns["X_nob_gene"]["row_ids"]) == subjects


def test_missing_subject_column_is_named(small_cohort) -> None:
    with pytest.raises(DataError, match=r"obs\['donor'\] not found"):
        GeneEncoder(groupby="donor").fit(small_cohort.genes)


def test_save_load_round_trip_without_pickle(tmp_path, pbmc, fitted) -> None:
    encoder, embedding = fitted
    path = tmp_path / "gene_encoder.safetensors"
    encoder.save(path)
    assert b"pickle" not in path.read_bytes()[:64]
    restored = GeneEncoder.load(path)
    assert restored.get_params() == encoder.get_params()
    np.testing.assert_array_equal(restored.transform(pbmc), embedding)


def test_loading_another_estimator_class_is_refused(tmp_path) -> None:
    import pandas as pd

    path = tmp_path / "residualizer.safetensors"
    Residualizer().fit(np.random.default_rng(0).normal(size=(10, 3)), pd.DataFrame({"age": np.arange(10.0)})).save(path)
    with pytest.raises(CorruptFileError, match="expected a saved GeneEncoder"):
        GeneEncoder.load(path)


def test_unfitted_encoder_says_so(pbmc) -> None:
    with pytest.raises(DataError, match="not fitted yet"):
        GeneEncoder().transform(pbmc)


def test_sklearn_protocol_holds() -> None:
    encoder = GeneEncoder(n_components=7, groupby="donor")
    twin = clone(encoder)
    assert twin.get_params() == encoder.get_params() and twin is not encoder


def test_pbmc_cells_pool_by_a_grouping_column(pbmc) -> None:
    cells = pbmc.copy()
    cells.obs["bulk_labels"] = sc.datasets.pbmc68k_reduced().obs["bulk_labels"].to_numpy()
    encoder = GeneEncoder(n_components=4, n_top_genes=300, groupby="bulk_labels")
    embedding = encoder.fit_transform(cells)
    assert embedding.shape == (10, 4)
    assert encoder.row_ids(cells) == sorted(cells.obs["bulk_labels"].astype(str).unique())
    # Log-normalised input pools by the mean: a group's row equals encoding its mean profile.
    group = encoder.row_ids(cells)[0]
    mean_profile = ad.AnnData(np.asarray(cells[cells.obs["bulk_labels"] == group].X.mean(axis=0)), var=cells.var)
    mean_profile.obs["bulk_labels"] = [group]
    np.testing.assert_allclose(encoder.transform(mean_profile)[0], embedding[0], atol=1e-4)


def test_a_failed_save_keeps_the_previous_file(tmp_path, pbmc, fitted, monkeypatch) -> None:
    import safetensors.numpy

    encoder, _ = fitted
    path = tmp_path / "encoder.safetensors"
    encoder.save(path)
    previous = path.read_bytes()

    def crash_midway(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)
        raise OSError("killed")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash_midway)
    with pytest.raises(OSError, match="killed"):
        GeneEncoder(n_components=3).fit(pbmc).save(path)
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["encoder.safetensors"]


def test_encoding_keeps_the_callers_torch_thread_count() -> None:
    # one thread asked for as CI's test workers ask; numba's first compile (inside scanpy's
    # preprocessing) resets OpenMP to every core, and only a fresh process has that first compile
    script = (
        "import torch\n"
        "from neuroomics_bridge import datasets\n"
        "from neuroomics_bridge.encoders import GeneEncoder\n"
        "cohort = datasets.synthetic_cohort(12, seed=0, cells_per_subject=4)\n"
        "encoder = GeneEncoder(n_components=4, n_top_genes=50, groupby=cohort.gene_groupby)\n"
        "encoder.fit(cohort.genes).transform(cohort.genes)\n"
        "print(torch.get_num_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1] == "1"
