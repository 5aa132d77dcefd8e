"""Cohort: splits, masks, encoding through the encoders, and the folder format."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from neuroomics_bridge import DataError, MissingFileError
from neuroomics_bridge.data import Cohort
from neuroomics_bridge.data.synthetic import MIN_SEVERITY
from neuroomics_bridge.datasets import DIAGNOSES, GENE_PROGRAMMES, synthetic_cohort
from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder, PrecomputedEncoder


def encoders() -> dict:
    return {"gene": GeneEncoder(n_components=6, n_top_genes=300), "brain": BrainEncoder("mni-gm-64", n_components=6)}


def test_split_is_disjoint_complete_stratified_and_stable(small_cohort) -> None:
    split = small_cohort.split(seed=7)
    folds = [set(split.train.subject_ids), set(split.val.subject_ids), set(split.test.subject_ids)]
    assert not (folds[0] & folds[1]) and not (folds[0] & folds[2]) and not (folds[1] & folds[2])
    assert set().union(*folds) == set(small_cohort.subject_ids)
    # Stratified: each label is cut 70/15/15 on its own (rounded), not the cohort as a whole.
    for label in set(small_cohort.labels):
        n = small_cohort.labels.count(label)
        counts = [fold.labels.count(label) for fold in (split.train, split.val, split.test)]
        assert counts == [round(0.7 * n), round(0.85 * n) - round(0.7 * n), n - round(0.85 * n)], label
    again = small_cohort.split(seed=7)
    assert again.test.subject_ids == split.test.subject_ids
    assert small_cohort.split(seed=8).test.subject_ids != split.test.subject_ids
    # Within a label, subjects keep one order whoever else is in the cohort, so a smaller cohort's
    # cuts fall along it too: none of its training subjects is in a later fold of the whole
    # cohort's split than any of its test subjects.
    fold_of = {subject: i for i, fold in enumerate(folds) for subject in fold}
    label_of = dict(zip(small_cohort.subject_ids, small_cohort.labels, strict=True))
    smaller = small_cohort.subset(small_cohort.subject_ids[:40]).split(seed=7)
    for label in set(smaller.train.labels):
        train = [fold_of[s] for s in smaller.train.subject_ids if label_of[s] == label]
        test = [fold_of[s] for s in smaller.test.subject_ids if label_of[s] == label]
        assert not test or max(train) <= min(test), label


def test_subset_keeps_every_field_aligned(small_cohort) -> None:
    chosen = small_cohort.subject_ids[10:13][::-1]
    part = small_cohort.subset(chosen)
    assert part.subject_ids == chosen
    assert part.reports == [small_cohort.reports[i] for i in (12, 11, 10)]
    assert list(part.covariates.index) == chosen
    assert set(part.genes.obs["subject_id"].astype(str)) <= set(chosen)


def test_encoding_fits_on_the_training_fold_and_masks_absent_modalities(small_cohort) -> None:
    split = small_cohort.split(seed=0)
    encoded = small_cohort.encode(encoders(), fit_on=split.train, residualize=["age", "sex", "site"])
    for modality, source_missing in (
        ("gene", [s not in set(small_cohort.genes.obs["subject_id"].astype(str)) for s in small_cohort.subject_ids]),
        ("brain", [image is None for image in small_cohort.brains]),
    ):
        assert encoded.features[modality].shape == (60, 6)
        np.testing.assert_array_equal(encoded.present(modality), ~np.asarray(source_missing))
        assert np.isnan(encoded.features[modality][~encoded.present(modality)]).all()
    assert (~encoded.present("gene")).any() and (~encoded.present("brain")).any()
    assert (encoded.present("gene") | encoded.present("brain")).all()
    # Residualised on the training fold's subjects: there, and only there, every feature is
    # uncorrelated with age (least-squares residuals are orthogonal to their regressors).
    in_train = np.isin(small_cohort.subject_ids, split.train.subject_ids)
    age = small_cohort.covariates["age"].to_numpy(float)
    for modality in ("gene", "brain"):
        present = encoded.present(modality)
        for rows, fitted in ((present & in_train, True), (present, False)):
            features, centred_age = encoded.features[modality][rows], age[rows] - age[rows].mean()
            covariance = np.abs(centred_age @ (features - features.mean(axis=0))) / rows.sum()
            assert (covariance.max() < 1e-4) == fitted, (modality, covariance.max())


def test_folder_round_trip_reencodes_to_the_same_vectors(tmp_path, small_cohort) -> None:
    folder = small_cohort.to_files(tmp_path / "cohort")
    assert {p.name for p in folder.iterdir()} >= {"genes.h5ad", "brain", "reports.csv", "covariates.csv", "cohort.json"}
    assert len(list((folder / "brain").glob("*.nii.gz"))) == sum(image is not None for image in small_cohort.brains)
    restored = Cohort.from_files(folder)
    assert restored.subject_ids == small_cohort.subject_ids and restored.reports == small_cohort.reports
    assert restored.labels == small_cohort.labels
    pd.testing.assert_frame_equal(restored.covariates, small_cohort.covariates, check_dtype=False)
    train = small_cohort.split(seed=0).train
    in_memory = small_cohort.encode(encoders(), fit_on=train)
    from_disk = restored.encode(encoders(), fit_on=train.subject_ids)
    for modality in ("gene", "brain"):
        np.testing.assert_allclose(from_disk.features[modality], in_memory.features[modality], atol=1e-5)


def test_many_small_labels_that_round_a_fold_away_are_warned_about() -> None:
    ids = [f"s{i:02d}" for i in range(40)]
    cohort = Cohort(subject_ids=ids, labels=[f"dx{i % 8}" for i in range(40)])  # 8 diagnoses of 5 subjects
    with pytest.warns(UserWarning, match=r"the val fold\(s\) came out empty .* each of the 8 labels"):
        split = cohort.split()
    assert (split.train.n_subjects, split.val.n_subjects, split.test.n_subjects) == (32, 0, 8)


def test_fit_on_ids_that_are_not_in_the_cohort_are_refused(small_cohort) -> None:
    table = pd.DataFrame(np.arange(120.0).reshape(60, 2), index=small_cohort.subject_ids)
    wrong = [subject.upper() for subject in small_cohort.subject_ids[:30]]  # every row's vector would be NaN
    with pytest.raises(DataError, match=r"fit_on: 30 of 30 subject id\(s\) are not in the cohort, e\.g\. \['SUB-"):
        small_cohort.encode({"fm": PrecomputedEncoder(table)}, fit_on=wrong, residualize=["age"])


def test_a_partly_missing_vector_is_refused_before_the_folder_is_written(tmp_path, small_cohort) -> None:
    values = np.arange(120.0).reshape(60, 2)
    values[4, 1] = np.nan  # damaged, not absent: reading the folder back would refuse it
    cohort = dataclasses.replace(small_cohort, features={"fm": values})
    with pytest.raises(DataError, match=r"features\['fm'\]: subject\(s\) \['sub-0004'\] have NaN in some columns"):
        cohort.to_files(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_gene_cells_of_none_of_the_fitting_subjects_are_named(small_cohort) -> None:
    cohort = dataclasses.replace(small_cohort, genes=small_cohort.genes.copy())
    cohort.genes.obs["subject_id"] = "P" + cohort.genes.obs["subject_id"].astype(str)  # another id scheme
    with pytest.raises(DataError, match=r"modality 'gene': no cells of the \d+ subject\(s\) to fit on; obs\['subj"):
        cohort.encode({"gene": GeneEncoder(n_components=4)}, fit_on=cohort.split(seed=0).train)


def test_text_covariates_stay_text_through_the_folder(tmp_path, small_cohort) -> None:
    covariates = small_cohort.covariates.assign(site=[f"0{i % 3 + 1}" for i in range(60)])  # codes, not numbers
    cohort = dataclasses.replace(small_cohort, covariates=covariates)
    restored = Cohort.from_files(cohort.to_files(tmp_path / "c"))
    pd.testing.assert_frame_equal(restored.covariates, covariates, check_names=False)
    assert restored.covariates["site"].tolist()[:3] == ["01", "02", "03"]


def test_precomputed_features_travel_through_the_folder(tmp_path, small_cohort) -> None:
    table = pd.DataFrame(np.arange(120.0).reshape(60, 2), index=small_cohort.subject_ids)
    encoded = small_cohort.encode({"fm": PrecomputedEncoder(table)})
    restored = Cohort.from_files(encoded.to_files(tmp_path / "c"))
    np.testing.assert_array_equal(restored.features["fm"], encoded.features["fm"])


def test_subjects_without_a_precomputed_modality_travel_through_the_folder(tmp_path, small_cohort) -> None:
    table = pd.DataFrame(np.arange(120.0).reshape(60, 2), index=small_cohort.subject_ids).iloc[5:]
    encoded = small_cohort.encode({"fm": PrecomputedEncoder(table)})
    assert not encoded.present("fm")[:5].any() and encoded.present("fm")[5:].all()
    restored = Cohort.from_files(encoded.to_files(tmp_path / "c"))
    np.testing.assert_array_equal(restored.features["fm"], encoded.features["fm"])  # NaN rows included
    np.testing.assert_array_equal(restored.present("fm"), encoded.present("fm"))


def test_brain_files_in_other_formats_are_written_as_readable_nifti(tmp_path) -> None:
    import nibabel as nib

    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s1.nii")  # uncompressed
    nib.save(nib.Nifti1Image(data + 1, np.eye(4)), tmp_path / "s2.nii.gz")
    cohort = Cohort(subject_ids=["s1", "s2"], reports=["a", "b"], brains=[tmp_path / "s1.nii", tmp_path / "s2.nii.gz"])
    restored = Cohort.from_files(cohort.to_files(tmp_path / "c"))
    for image, expected in zip(restored.brains, (data, data + 1), strict=True):
        np.testing.assert_array_equal(np.asarray(nib.load(image).dataobj), expected)


def test_writing_a_folder_leaves_the_callers_anndata_as_it_was(tmp_path, small_cohort) -> None:
    genes = small_cohort.genes.copy()
    genes.obs["batch"] = ["b"] * genes.n_obs  # a string column anndata would make categorical on writing
    dtypes = genes.obs.dtypes.astype(str).to_dict()
    Cohort(subject_ids=small_cohort.subject_ids, reports=small_cohort.reports, genes=genes).to_files(tmp_path / "c")
    assert genes.obs.dtypes.astype(str).to_dict() == dtypes


def test_a_failed_write_leaves_the_previous_folder_intact(tmp_path, small_cohort, monkeypatch) -> None:
    folder = small_cohort.to_files(tmp_path / "cohort")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    import nibabel as nib

    calls = {"n": 0}
    real_save = nib.save

    def failing_save(image, path):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full")
        real_save(image, path)

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        small_cohort.to_files(folder)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]  # no temporary folder left behind


def test_missing_or_malformed_folders_are_named(tmp_path) -> None:
    with pytest.raises(MissingFileError, match="no such cohort folder"):
        Cohort.from_files(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match=r"reports\.csv: missing"):
        Cohort.from_files(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "reports.csv").write_text("id,text\ns1,hello\n")
    with pytest.raises(DataError, match="expected columns subject_id, report"):
        Cohort.from_files(bad)
    unreadable = {  # empty, ragged (a later row, or the first, which pandas would take as the index), not UTF-8
        "": "EmptyDataError",
        "subject_id,report\ns1,a\ns2,b,c,d\n": "ParserError",
        "subject_id,report\ns1,a,b,c\ns2,d\n": "rows with more fields than the header's 2",
        "subject_id,report\ns1,caf\xe9\n": "UnicodeDecodeError",
    }
    for text, reason in unreadable.items():
        (bad / "reports.csv").write_bytes(text.encode("latin-1"))
        with pytest.raises(DataError, match=rf"reports\.csv: not a readable table \({reason}"):
            Cohort.from_files(bad)
    (bad / "reports.csv").write_text("subject_id,label,report\ns1,AD,x\ns2, ,y\n")
    with pytest.raises(DataError, match=r"reports\.csv: empty label for subject\(s\) \['s2'\]"):
        Cohort.from_files(bad)
    (bad / "cohort.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match=r"cohort\.json: expected format"):
        Cohort.from_files(bad)


def test_subject_ids_that_are_not_file_names_stay_inside_the_folder(tmp_path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4))
    ids = ["ok", "../../escaped", "site/1", "_0_ok"]
    folder = Cohort(ids, reports=list("abcd"), brains=[image] * 4).to_files(tmp_path / "cohort")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.nii.gz"))
    assert len(written) == 4 and all(path.startswith("cohort/brain/") for path in written)
    restored = Cohort.from_files(folder)
    assert restored.subject_ids == ids
    for path in restored.brains:
        np.testing.assert_array_equal(np.asanyarray(nib.load(path).dataobj), np.asanyarray(image.dataobj))


def test_a_malformed_folder_names_its_file_and_what_it_found(tmp_path) -> None:
    import anndata as ad

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "reports.csv").write_text("subject_id,report\ns1,x\ns1,y\n")
    with pytest.raises(DataError, match=r"reports\.csv: duplicated id\(s\) \['s1'\]"):
        Cohort.from_files(folder)
    (folder / "reports.csv").write_text("subject_id,report\ns1,x\ns2,y\n")
    (folder / "covariates.csv").write_text("subject_id,age\ns1,50\ns2,60\ns2,61\n")
    with pytest.raises(DataError, match=r"covariates\.csv: duplicated id\(s\) \['s2'\]"):
        Cohort.from_files(folder)
    (folder / "covariates.csv").unlink()
    cells = ad.AnnData(np.ones((2, 3), np.float32), obs=pd.DataFrame({"donor": ["s1", "s2"]}, index=["c1", "c2"]))
    cells.write_h5ad(folder / "genes.h5ad")
    with pytest.raises(DataError, match=r"genes\.h5ad: expected obs\['subject_id'\].*obs has \['donor'\]"):
        Cohort.from_files(folder)
    (folder / "genes.h5ad").unlink()
    (folder / "cohort.json").write_text(json.dumps({"format": "neuroomics-bridge/cohort-v1", "brain_files": ["s1"]}))
    with pytest.raises(
        DataError, match=r"cohort\.json: expected brain_files to map subject ids to file paths, got list"
    ):
        Cohort.from_files(folder)


def test_saved_encoders_that_were_cut_or_edited_name_the_file_and_the_entry(tmp_path, small_cohort) -> None:
    from neuroomics_bridge import CorruptFileError
    from neuroomics_bridge.encoders.cohort import CohortEncoder
    from neuroomics_bridge.io import read_arrays, write_arrays

    fitted = CohortEncoder({"gene": GeneEncoder(n_components=4, n_top_genes=100)}, residualize=["age", "site"])
    folder = tmp_path / "encoders"
    fitted.fit(small_cohort).save(folder)
    no_site = small_cohort.subset(small_cohort.subject_ids)
    no_site.covariates = no_site.covariates.drop(columns="site")
    with pytest.raises(DataError, match=r"covariates \(covariates\.csv\) lack \['site'\]; they have \["):
        CohortEncoder.load(folder).transform(no_site)
    arrays, metadata = read_arrays(folder / "gene.safetensors")
    edits = {  # another version's parameter; the fitted values gone
        "gene.safetensors: parameters .*'n_neighbours'.* do not fit GeneEncoder": {
            "params": {**metadata["params"], "n_neighbours": 5}
        },
        r"gene.safetensors: expected 'params' and 'fitted' objects": {"fitted": None},
    }
    for message, edit in edits.items():
        write_arrays(folder / "gene.safetensors", arrays, {**metadata, **edit})
        with pytest.raises(CorruptFileError, match=message):
            CohortEncoder.load(folder)
    write_arrays(folder / "gene.safetensors", {**arrays, "components_": arrays["components_"][:, :5]}, metadata)
    with pytest.raises(CorruptFileError, match=r"gene\.safetensors: components_: expected shape \('k', 100\), got"):
        CohortEncoder.load(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for edit, message in (
        ({"class": "GenEncoder"}, r"modalities\['gene'\]: expected a 'class' in \['BrainEncoder', 'GeneEncoder'"),
        ({"file": None}, r"modalities\['gene'\]: expected .* and its 'file'"),
    ):
        entry = {key: value for key, value in {**manifest["modalities"]["gene"], **edit}.items() if value is not None}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "modalities": {"gene": entry}}))
        with pytest.raises(CorruptFileError, match=r"manifest\.json: " + message):
            CohortEncoder.load(folder)
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "residualize"}))
    with pytest.raises(
        CorruptFileError, match=r"manifest\.json: expected 'modalities' \(an object\) and 'residualize'"
    ):
        CohortEncoder.load(folder)


def test_modality_names_that_are_not_file_names_are_refused() -> None:
    for name in ("brain/fmri", "../x", ""):
        with pytest.raises(DataError, match=r"modality names are letters, digits.*got " + re.escape(repr(name))):
            Cohort(["a"], features={name: np.zeros((1, 2))})


def test_cohort_rejects_misaligned_fields() -> None:
    with pytest.raises(DataError, match=r"duplicated id\(s\) \['a'\]"):
        Cohort(subject_ids=["a", "a"])
    with pytest.raises(DataError, match=r"Cohort.reports: expected 2 entries"):
        Cohort(subject_ids=["a", "b"], reports=["only one"])
    with pytest.raises(DataError, match=r"features\['gene'\]: expected shape \(2, d\)"):
        Cohort(subject_ids=["a", "b"], features={"gene": np.zeros((3, 4))})


def test_synthetic_cohort_is_reproducible_and_has_its_latent_structure() -> None:
    first, second = (
        synthetic_cohort(40, seed=11, cells_per_subject=6),
        synthetic_cohort(40, seed=11, cells_per_subject=6),
    )
    assert first.reports == second.reports and first.labels == second.labels
    np.testing.assert_array_equal(first.genes.X.toarray(), second.genes.X.toarray())
    np.testing.assert_array_equal(np.asanyarray(first.brains[0].dataobj), np.asanyarray(second.brains[0].dataobj))
    assert synthetic_cohort(40, seed=12, cells_per_subject=6).reports != first.reports
    assert set(first.labels) == set(DIAGNOSES)
    severity = first.phenotypes["severity"].to_numpy()
    assert (severity[np.asarray(first.labels) == "control"] == 0).all() and (
        severity[np.asarray(first.labels) != "control"] >= MIN_SEVERITY
    ).all()
    for report, label in zip(first.reports, first.labels, strict=True):
        assert "Impression:" in report and (label in report or label == "control")


def test_disease_programmes_and_atrophy_are_in_the_raw_data() -> None:
    cohort = synthetic_cohort(80, seed=5, cells_per_subject=10)
    labels = np.asarray(cohort.labels)
    cells = cohort.genes
    subject_label = dict(zip(cohort.subject_ids, labels, strict=True))
    cell_labels = np.asarray([subject_label[s] for s in cells.obs["subject_id"].astype(str)])
    programme = cells.var_names.isin(GENE_PROGRAMMES["Alzheimer's disease"])
    ad_mean = cells.X[cell_labels == "Alzheimer's disease"][:, programme].mean()
    control_mean = cells.X[cell_labels == "control"][:, programme].mean()
    assert ad_mean > 1.2 * control_mean
    hippocampus = (slice(30, 34), slice(25, 30), slice(11, 15))  # around MNI (28, -20, -14) at 4 mm
    grey = [np.asanyarray(image.dataobj)[hippocampus].mean() for image in cohort.brains]
    assert np.mean([g for g, lab in zip(grey, labels, strict=True) if lab == "Alzheimer's disease"]) < np.mean(
        [g for g, lab in zip(grey, labels, strict=True) if lab == "control"]
    )
