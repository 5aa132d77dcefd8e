"""AnnData in and out (scverse-style keys), notebook display, reports as a DataFrame, damaged vectors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from neuroomics_bridge import RESEARCH_NOTICE, DataError, reports_to_frame
from tests.test_reports import sample_report

CLASSES = {"control": "A healthy control subject.", "Parkinson's disease": "A patient with Parkinson's disease."}


@pytest.fixture(scope="module")
def bridge(make_bridge):
    return make_bridge(seed=4)


@pytest.fixture
def cells() -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(rng.normal(size=(7, 6)).astype(np.float32))
    adata.obs_names = [f"cell-{i}" for i in range(7)]
    adata.obsm["X_brain"] = rng.normal(size=(7, 4)).astype(np.float32)
    adata.obsm["X_brain"][2] = np.nan  # this cell has no brain vector
    adata.obs["age"] = np.arange(60, 67)
    return adata


def test_embed_writes_obsm_and_uns_and_matches_the_array_path(bridge, cells) -> None:
    assert bridge.embed("gene", cells) is None  # in place, scanpy's default
    np.testing.assert_allclose(cells.obsm["X_nob_gene"], bridge.embed("gene", cells.X))
    assert cells.uns["X_nob_gene"]["use_rep"] == "X" and cells.uns["X_nob_gene"]["adapters"] == bridge.adapter_id
    bridge.embed("brain", cells, key_added="aligned_brain")  # read from obsm["X_brain"] by default
    np.testing.assert_allclose(cells.obsm["aligned_brain"], bridge.embed("brain", cells.obsm["X_brain"]))
    assert np.isnan(cells.obsm["aligned_brain"][2]).all()  # an absent row stays absent


def test_copy_returns_a_new_anndata_and_leaves_the_given_one_unchanged(bridge, cells) -> None:
    before = set(cells.obsm)
    copied = bridge.embed("gene", cells, copy=True)
    assert isinstance(copied, ad.AnnData) and "X_nob_gene" in copied.obsm
    assert set(cells.obsm) == before and "X_nob_gene" not in cells.uns


def test_zero_shot_writes_the_class_to_obs_and_probabilities_to_obsm(bridge, cells, tmp_path) -> None:
    bridge.zero_shot("brain", cells, CLASSES)
    key = "nob_brain_zero_shot"
    probabilities = cells.obsm[f"{key}_probabilities"]
    np.testing.assert_allclose(probabilities, bridge.zero_shot("brain", cells.obsm["X_brain"], list(CLASSES.values())))
    assert isinstance(cells.obs[key].dtype, pd.CategoricalDtype)
    assert list(cells.obs[key].cat.categories) == list(CLASSES)
    absent = np.isnan(probabilities).all(axis=1)
    assert absent.tolist() == [row == 2 for row in range(cells.n_obs)]  # row 2 has no brain vector
    assert cells.obs[key].isna().tolist() == absent.tolist()  # and so no class
    expected = np.asarray(list(CLASSES), dtype=object)[np.nan_to_num(probabilities, nan=-1).argmax(axis=1)]
    assert list(cells.obs[key][~absent]) == list(expected[~absent])
    assert cells.uns[key]["classes"] == list(CLASSES) and cells.uns[key]["class_texts"] == list(CLASSES.values())
    cells.write_h5ad(tmp_path / "cells.h5ad")  # the keys are h5ad-serialisable and read back
    back = ad.read_h5ad(tmp_path / "cells.h5ad")
    assert list(back.obs[key].astype(object).fillna("-")) == list(cells.obs[key].astype(object).fillna("-"))
    np.testing.assert_allclose(back.obsm[f"{key}_probabilities"], probabilities)


def test_a_missing_obsm_key_names_what_is_there(bridge, cells) -> None:
    with pytest.raises(DataError, match=r"obsm\['X_pca'\].*X_brain"):
        bridge.embed("gene", cells, use_rep="X_pca")


def test_reports_from_anndata_use_obs_names_obs_covariates_and_write_obs(bridge, cells) -> None:
    cells.obsm["gene"] = cells.X.copy()
    reports = bridge.generate_report(cells, classes=list(CLASSES), max_new_tokens=6, key_added="nob_report")
    assert [r.subject_id for r in reports] == list(cells.obs_names)
    assert reports[0].evidence.covariates == {"age": "60"} and reports[2].evidence.absent == ["brain"]
    assert list(cells.obs["nob_report_text"]) == [r.text for r in reports]
    assert (cells.obs["nob_report_notice"] == RESEARCH_NOTICE).all()
    assert [None if pd.isna(v) else v for v in cells.obs["nob_report"]] == [r.label for r in reports]
    assert cells.uns["nob_report"]["notice"] == RESEARCH_NOTICE and cells.uns["nob_report"]["classes"] == list(CLASSES)


def test_a_partly_nan_vector_is_an_error_naming_modality_row_and_column(bridge) -> None:
    X = np.zeros((3, 6), dtype=np.float32)
    X[1] = np.nan  # absent: fine
    assert np.isnan(bridge.embed("gene", X)[1]).all()
    X[2, [0, 4]] = np.nan
    for call in (lambda: bridge.embed("gene", X), lambda: bridge.prefix({"gene": X})):
        with pytest.raises(DataError, match=r"gene: row 2 has NaN in column\(s\) \[0, 4\] but not in all 6"):
            call()


def test_notebook_display_puts_the_notice_first() -> None:
    report = sample_report()
    html, markdown = report._repr_html_(), report._repr_markdown_()
    assert html == report.to_html() and markdown == report.to_markdown()
    assert html.index(RESEARCH_NOTICE) < html.index("Impression") and "&lt;b&gt;" in html
    assert markdown.index(RESEARCH_NOTICE) < markdown.index("Impression")


def test_reports_become_one_row_each_with_section_and_evidence_columns() -> None:
    first, second = sample_report(), sample_report()
    second.subject_id, second.sections = "sub-2", {"Impression": "Control."}
    second.evidence.covariates = {"sex": "female"}
    frame = reports_to_frame([first, second])
    assert list(frame.index) == ["sub-1", "sub-2"]
    sections = list(first.sections)
    assert list(frame.columns[: 2 + len(sections)]) == ["label", "layout", *sections]
    assert frame.loc["sub-2", "Impression"] == "Control." and frame.loc["sub-2", sections[-1]] == ""
    assert frame.loc["sub-1", "p(control)"] == 0.7 and frame.loc["sub-1", "neighbours"] == "sub-9"
    assert frame.loc["sub-1", "absent"] == "gene" and frame.loc["sub-2", "known_sex"] == "female"
    assert pd.isna(frame.loc["sub-1", "known_sex"])
    assert list(frame.columns[-3:]) == ["model", "adapters", "notice"] and set(frame["notice"]) == {RESEARCH_NOTICE}
