"""PrecomputedEncoder sources and covariate residualisation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from neuroomics_bridge import CorruptFileError, DataError
from neuroomics_bridge.encoders import PrecomputedEncoder, Residualizer, residualize

IDS = ["s3", "s1", "s2", "s0"]
VALUES = np.arange(12, dtype=np.float64).reshape(4, 3)


def write_source(kind: str, folder) -> tuple[object, dict]:
    if kind == "npy":
        path = folder / "emb.npy"
        np.save(path, VALUES)
        return path, {"ids": IDS}
    table = pd.DataFrame(VALUES, columns=["a", "b", "c"])
    table.insert(0, "subject_id", IDS)
    if kind == "parquet":
        table.to_parquet(folder / "emb.parquet")
        return folder / "emb.parquet", {}
    if kind == "csv":
        table.to_csv(folder / "emb.csv", index=False)
        return folder / "emb.csv", {}
    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32), obs=pd.DataFrame(index=IDS))
    adata.obsm["X_scgpt"] = VALUES
    adata.write_h5ad(folder / "emb.h5ad")
    return folder / "emb.h5ad", {"key": "X_scgpt"}


@pytest.mark.parametrize("kind", ["npy", "parquet", "csv", "h5ad"])
def test_rows_are_looked_up_by_subject_id(tmp_path, kind: str) -> None:
    source, options = write_source(kind, tmp_path)
    encoder = PrecomputedEncoder(source, **options).fit()
    np.testing.assert_array_equal(encoder.transform(["s0", "s3"]), VALUES[[3, 0]].astype(np.float32))


def test_csv_ids_that_look_like_numbers_stay_text(tmp_path) -> None:
    path = tmp_path / "emb.csv"
    path.write_text("subject_id,a,b\n001,1.0,2.0\n010,3.0,4.0\n")
    encoder = PrecomputedEncoder(path).fit()
    assert encoder.ids_ == ["001", "010"]
    np.testing.assert_array_equal(encoder.transform(["010", "001"]), [[3.0, 4.0], [1.0, 2.0]])


def test_a_saved_npy_encoder_with_numpy_ids_loads_back_the_same_rows(tmp_path) -> None:
    from neuroomics_bridge.encoders.cohort import CohortEncoder

    source, _ = write_source("npy", tmp_path)
    encoders = CohortEncoder({"fm": PrecomputedEncoder(source, ids=np.array(IDS))})
    restored = CohortEncoder.load(encoders.save(tmp_path / "encoders")).encoders["fm"].fit()
    np.testing.assert_array_equal(restored.transform(["s3", "s0"]), VALUES[[0, 3]].astype(np.float32))


def test_unknown_subjects_are_an_error_or_nan_rows(tmp_path) -> None:
    source, _ = write_source("parquet", tmp_path)
    with pytest.raises(DataError, match=r"no embedding for 1 subject\(s\), e.g. \['s9'\]"):
        PrecomputedEncoder(source).transform(["s1", "s9"])
    rows = PrecomputedEncoder(source, missing="nan").transform(["s1", "s9"])
    assert not np.isnan(rows[0]).any() and np.isnan(rows[1]).all()


def test_feature_columns_that_are_not_numbers_are_named(tmp_path) -> None:
    table = pd.DataFrame({"a": [1.0, 2.0], "note": ["x", "y"]}, index=["s0", "s1"])
    with pytest.raises(DataError, match=r"non-numeric feature column\(s\) \['note'\]"):
        PrecomputedEncoder(table).fit()
    table.insert(0, "subject_id", table.index)
    table.to_parquet(tmp_path / "emb.parquet", index=False)
    with pytest.raises(DataError, match=r"emb\.parquet.*non-numeric feature column\(s\) \['note'\]"):
        PrecomputedEncoder(tmp_path / "emb.parquet").fit()


def test_duplicated_ids_and_non_finite_values_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match=r"duplicated subject id\(s\) \['s1'\]"):
        PrecomputedEncoder(pd.DataFrame(VALUES, index=["s1", "s1", "s2", "s3"])).fit()
    broken = VALUES.copy()
    broken[2, 1] = np.nan
    with pytest.raises(DataError, match=r"1 NaN/infinite value.*subject 's2'"):
        PrecomputedEncoder(pd.DataFrame(broken, index=IDS)).fit()


def test_a_pickled_npy_is_refused_without_unpickling(tmp_path) -> None:
    path = tmp_path / "hostile.npy"
    np.save(path, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptFileError, match=r"hostile\.npy: cannot be read"):
        PrecomputedEncoder(path).fit()


def test_missing_obsm_key_lists_the_available_ones(tmp_path) -> None:
    source, _ = write_source("h5ad", tmp_path)
    with pytest.raises(DataError, match=r"obsm key 'X_uce' not found; available: \['X_scgpt'\]"):
        PrecomputedEncoder(source, key="X_uce").fit()


def covariate_data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {"age": rng.normal(65, 8, n), "sex": rng.choice(["F", "M"], n), "site": rng.choice(["a", "b", "c"], n)}
    )
    signal = rng.normal(size=(n, 4))
    confound = 0.3 * (table["age"].to_numpy()[:, None] - 65) + 2.0 * (table["site"] == "b").to_numpy()[:, None]
    return signal + confound, table, signal


def test_residualising_matches_ordinary_least_squares_by_hand() -> None:
    X, table, _ = covariate_data()
    design = np.column_stack(
        [np.ones(len(X)), table["age"], table["sex"] == "M", table["site"] == "b", table["site"] == "c"]
    ).astype(float)
    beta = np.linalg.inv(design.T @ design) @ design.T @ X
    expected = X - design[:, 1:] @ beta[1:]
    residual = Residualizer().fit_transform(X, table)
    # Same fitted covariate effects up to the centring of age (which moves only the intercept).
    np.testing.assert_allclose(residual - residual.mean(axis=0), expected - expected.mean(axis=0), atol=1e-4)
    assert abs(np.corrcoef(residual[:, 0], table["age"])[0, 1]) < 1e-6


def test_residualize_fits_on_the_training_rows_only() -> None:
    X, table, signal = covariate_data(seed=1)
    train = np.arange(len(X)) < 80
    residual = residualize(X, table, fit_on=train)
    shifted = X.copy()
    shifted[~train] += 100.0  # test rows cannot influence the fit
    np.testing.assert_allclose(residualize(shifted, table, fit_on=train)[train], residual[train], atol=1e-4)
    assert np.corrcoef(residual[~train, 0], signal[~train, 0])[0, 1] > 0.9


def test_covariate_with_missing_values_is_named() -> None:
    X, table, _ = covariate_data()
    table.loc[5, "age"] = np.nan
    with pytest.raises(DataError, match=r"covariates\['age'\] has 1 missing value\(s\) \(rows \[5\]\)"):
        Residualizer().fit(X, table)


def test_unseen_category_is_named() -> None:
    X, table, _ = covariate_data()
    residualizer = Residualizer().fit(X, table)
    table.loc[0, "site"] = "z"
    with pytest.raises(DataError, match=r"covariates\['site'\] has level\(s\) \['z'\] not seen in fit"):
        residualizer.transform(X, table)


def test_residualizer_round_trips_through_a_file(tmp_path) -> None:
    X, table, _ = covariate_data()
    residualizer = Residualizer(["age", "site"], categorical=["site"]).fit(X, table)
    residualizer.save(tmp_path / "res.safetensors")
    restored = Residualizer.load(tmp_path / "res.safetensors")
    np.testing.assert_allclose(restored.transform(X, table), residualizer.transform(X, table))


def test_a_table_written_with_its_id_index_or_given_with_an_id_column_is_read_by_id(tmp_path) -> None:
    table = pd.DataFrame(VALUES, columns=["a", "b", "c"], index=pd.Index(IDS, name="subject_id"))
    table.to_parquet(tmp_path / "indexed.parquet")  # pandas' default keeps the index, not a column
    with_column = table.reset_index().rename(columns={"subject_id": "sid"})
    for source, options in ((tmp_path / "indexed.parquet", {}), (with_column, {"id_column": "sid"})):
        encoder = PrecomputedEncoder(source, **options).fit()
        assert encoder.ids_ == IDS and encoder.n_features_out_ == 3, source
        np.testing.assert_array_equal(encoder.transform(["s0", "s3"]), VALUES[[3, 0]].astype(np.float32))
    nameless = table.reset_index(drop=True)  # no id column: the first column would be taken as the ids
    nameless.to_parquet(tmp_path / "no_ids.parquet", index=False)
    with pytest.raises(DataError, match=r"no_ids\.parquet: no 'subject_id' column, and the first column 'a' holds"):
        PrecomputedEncoder(tmp_path / "no_ids.parquet").fit()


def test_a_single_level_covariate_is_absorbed_by_the_intercept() -> None:
    X, table, _ = covariate_data()
    table["site"] = "a"  # a one-site study: residualising on site changes nothing beyond age and sex
    np.testing.assert_allclose(
        Residualizer(["age", "sex", "site"]).fit_transform(X, table),
        Residualizer(["age", "sex"]).fit_transform(X, table),
        atol=1e-5,
    )


def test_numbers_mixed_with_text_and_a_wrong_width_are_named() -> None:
    X, table, _ = covariate_data()
    mixed = table.astype({"age": object})
    mixed.loc[3, "age"] = "unknown"  # as categorical, each age would be its own level
    with pytest.raises(DataError, match=r"covariates\['age'\] holds numbers and 1 text value\(s\) such as 'unknown'"):
        Residualizer().fit(X, mixed)
    codes = table.assign(site=table["site"].map({"a": "01", "b": "02", "c": "A1"}).astype("category"))
    Residualizer().fit(X, codes)  # declared categorical: its codes are levels, whatever they look like
    residualizer = Residualizer().fit(X, table)
    with pytest.raises(DataError, match=r"covariates\['age'\] was numeric in fit but holds 'unknown'"):
        residualizer.transform(X, mixed)
    with pytest.raises(DataError, match=rf"expected X with {X.shape[1]} feature columns \(as fitted\), got \(120, 1\)"):
        residualizer.transform(X[:, :1], table)
    with pytest.raises(DataError, match=r"no subjects to fit on"):
        Residualizer().fit(X[:0], table[:0])
