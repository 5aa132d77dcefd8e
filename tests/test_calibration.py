"""Prompt ensembles, temperature scaling, expected calibration error and abstaining reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroomics_bridge import Bridge, DataError
from neuroomics_bridge.bridge.generation import ABSTAIN
from neuroomics_bridge.evaluation.calibration import (
    ece_floor,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    with_temperature,
)
from neuroomics_bridge.reports.prompts import class_wordings, prompt_ensemble

WORDINGS = {
    "control": ["A healthy control subject.", "No neurodegenerative disease."],
    "Parkinson's disease": "A patient with Parkinson's disease.",
}


@pytest.fixture(scope="module")
def bridge(make_bridge) -> Bridge:
    return make_bridge(seed=7)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels])))


def test_an_ensemble_is_the_normalised_mean_of_its_wordings_embeddings(bridge) -> None:
    X = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    by_hand = []
    for texts in (WORDINGS["control"], [WORDINGS["Parkinson's disease"]]):
        mean = bridge.embed_text(texts).mean(axis=0)
        by_hand.append(mean / np.linalg.norm(mean))
    scale = float(bridge.adapters.losses["gene-text"].similarity_scale())
    centred = bridge.embed("gene", X) - bridge.adapters.gap_gene.numpy()
    logits = scale * centred @ np.stack(by_hand).T
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(bridge.zero_shot("gene", X, WORDINGS), expected, rtol=1e-5, atol=1e-6)
    single = bridge.zero_shot("gene", X, [WORDINGS["control"][0], WORDINGS["Parkinson's disease"]])
    assert not np.allclose(single, expected)  # the second wording changed the control class


def test_centred_prompts_drop_what_a_wording_set_shares(bridge, monkeypatch) -> None:
    wordings = [WORDINGS["control"], [WORDINGS["Parkinson's disease"]]]
    width = bridge.adapters.text_center.shape[0]
    vectors = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
    style = 5 * torch.randn(width, generator=torch.Generator().manual_seed(1))  # e.g. lay words in every text
    encoded = {"plain": vectors, "styled": vectors + style}
    for name, value in encoded.items():
        monkeypatch.setattr(bridge.text_encoder, "encode", lambda texts, value=value: value.clone())
        encoded[name] = (bridge.class_embeddings(wordings), bridge.class_embeddings(wordings, center_prompts=True))
    np.testing.assert_allclose(encoded["plain"][1], encoded["styled"][1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(encoded["plain"][0], encoded["styled"][0], atol=1e-3)  # training-text centre: it stays
    class_mean = torch.stack([vectors[:2].mean(dim=0), vectors[2]]).mean(dim=0)
    with torch.no_grad():
        by_hand = bridge.adapters.heads["text"](vectors - class_mean).numpy()
    means = np.stack([by_hand[:2].mean(axis=0), by_hand[2]])
    np.testing.assert_allclose(encoded["plain"][1], means / np.linalg.norm(means, axis=1, keepdims=True), rtol=1e-5)


def test_prompt_ensembles_cross_templates_with_descriptions() -> None:
    ensemble = prompt_ensemble(["Report: {}", "Impression: {}"], WORDINGS)
    assert ensemble["control"] == [
        "Report: A healthy control subject.",
        "Report: No neurodegenerative disease.",
        "Impression: A healthy control subject.",
        "Impression: No neurodegenerative disease.",
    ]
    names, wordings = class_wordings(ensemble)
    assert names == list(WORDINGS) and [len(w) for w in wordings] == [4, 2]


def test_the_fitted_temperature_softens_an_over_confident_model_and_lowers_its_nll() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=400)
    right = rng.random(400) < 0.6  # 60% right, but always 95% sure
    predicted = np.where(right, labels, (labels + 1) % 3)
    probabilities = np.full((400, 3), 0.025)
    probabilities[np.arange(400), predicted] = 0.95
    temperature = fit_temperature(probabilities, labels)
    scaled = with_temperature(probabilities, temperature)
    assert temperature > 1.5 and nll(scaled, labels) < nll(probabilities, labels) - 0.2
    assert (scaled.argmax(axis=1) == probabilities.argmax(axis=1)).all()  # no prediction changes
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(probabilities, labels) / 3
    np.testing.assert_allclose(with_temperature(scaled, 1 / temperature), probabilities, atol=1e-9)


def test_expected_calibration_error_against_a_hand_computed_value() -> None:
    probabilities = np.array([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.4, 0.6], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 0, 1])
    # bins of width 0.5 over the top probability: (0.5, 1] holds all five, confidence
    # mean (0.95 + 0.85 + 0.65 + 0.6 + 0.9) / 5 = 0.79, accuracy 3/5 -> |0.6 - 0.79| = 0.19
    assert expected_calibration_error(probabilities, labels, n_bins=2) == pytest.approx(0.19)
    # bins of width 0.1: 0.6 -> (0.5, 0.6] wrong; 0.65 (0.6, 0.7] right; 0.85 (0.8, 0.9] wrong,
    # 0.9 (0.8, 0.9] right; 0.95 (0.9, 1] right
    expected = (0.6 + 0.35 + 2 * abs(0.5 - 0.875) + 0.05) / 5
    assert expected_calibration_error(probabilities, labels, n_bins=10) == pytest.approx(expected)
    confidence, accuracy, counts = reliability_bins(probabilities, labels, n_bins=10)
    assert counts.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 2, 1] and accuracy[8] == 0.5 and confidence[8] == 0.875


def test_the_ece_floor_is_what_sampling_noise_gives_a_calibrated_model() -> None:
    from scipy.stats import binom

    # every row 50:50, so every row sits in one bin and the ECE is |share of class 0 - 0.5|
    n = 40
    coin = np.full((n, 2), 0.5)
    k = np.arange(n + 1)
    by_hand = float(np.sum(binom.pmf(k, n, 0.5) * np.abs(k / n - 0.5)))
    assert ece_floor(coin, n_draws=4000) == pytest.approx(by_hand, abs=0.005)
    assert ece_floor(np.full((1000, 2), 0.5), n_draws=200) < by_hand / 3  # more subjects, less noise
    assert ece_floor(np.eye(3)[[0, 1, 2, 2]]) == 0.0  # one-hot: the drawn label is the predicted one
    assert ece_floor(coin, seed=3) == ece_floor(coin, seed=3)


def test_the_temperature_is_fitted_stored_used_and_saved(bridge, small_cohort, tmp_path, tiny_backbone) -> None:
    from neuroomics_bridge import GeneEncoder

    cohort = small_cohort.encode({"gene": GeneEncoder(n_components=6, n_top_genes=50)})
    classes = sorted(set(cohort.labels))
    before = bridge.zero_shot("gene", cohort.features["gene"][cohort.present("gene")], classes)
    fitted = bridge.fit_temperature(cohort, classes)
    assert set(fitted) == {"gene"} and float(bridge.adapters.temperature_gene) == pytest.approx(fitted["gene"])
    rows = cohort.present("gene")
    after = bridge.zero_shot("gene", cohort.features["gene"][rows], classes)
    raw = bridge.zero_shot("gene", cohort.features["gene"][rows], classes, calibrated=False)
    np.testing.assert_allclose(raw, before, rtol=1e-5)
    np.testing.assert_allclose(after, with_temperature(raw, fitted["gene"]), rtol=1e-4, atol=1e-6)
    # the temperature that fits each present subject's own label, row for row
    labels = [classes.index(label) for label, keep in zip(cohort.labels, rows, strict=True) if keep]
    assert fitted["gene"] == pytest.approx(fit_temperature(raw, labels), rel=1e-4)
    assert fitted["gene"] != pytest.approx(fit_temperature(raw, labels[::-1]), rel=1e-2)
    loaded = Bridge.from_pretrained(bridge.save_pretrained(tmp_path / "b"), backbone=tiny_backbone)
    assert float(loaded.adapters.temperature_gene) == pytest.approx(fitted["gene"])
    with torch.no_grad():
        bridge.adapters.temperature_gene.fill_(1.0)


def test_reports_abstain_exactly_below_the_threshold(bridge) -> None:
    X = np.random.default_rng(3).normal(size=(1, 6)).astype(np.float32)
    classes = ["control", "Parkinson's disease"]
    options = {"classes": classes, "max_new_tokens": 4}
    (plain,) = bridge.generate_report({"gene": X}, **options)
    top = max(plain.evidence.probabilities.values())
    (at,) = bridge.generate_report({"gene": X}, abstain_below=top, **options)
    (above,) = bridge.generate_report({"gene": X}, abstain_below=top + 0.001, **options)
    assert at.text == plain.text and at.label == plain.label
    assert ABSTAIN in above.impression and above.label is None
    assert above.text.split("Impression:")[0] == plain.text.split("Impression:")[0]  # findings kept
    with pytest.raises(DataError, match="abstain_below needs classes"):
        bridge.generate_report({"gene": X}, abstain_below=0.5, max_new_tokens=2)


def test_class_wordings_are_extra_text_views_of_their_subjects_in_training() -> None:
    from neuroomics_bridge.training.contrastive import ContrastiveStage

    stage = ContrastiveStage(class_views={"control": WORDINGS["control"]}, train_labels=["control", "PD"])
    assert stage._views(0, "One. Two.") == ["One. Two.", "One.", "Two.", *WORDINGS["control"]]
    assert stage._views(1, "One. Two.") == ["One. Two.", "One.", "Two."]


def test_a_bridge_saved_before_temperatures_existed_loads_with_temperature_one(make_bridge, tmp_path, tiny_backbone):
    from safetensors.torch import load_file, save_file

    saved = make_bridge(seed=2).save_pretrained(tmp_path / "old")
    weights = load_file(saved / "adapters.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("temperature_")}, saved / "adapters.safetensors")
    loaded = Bridge.from_pretrained(saved, backbone=tiny_backbone)
    assert float(loaded.adapters.temperature_gene) == 1.0 and float(loaded.adapters.temperature_brain) == 1.0


def test_every_wording_set_names_every_class_once_in_its_own_words() -> None:
    from neuroomics_bridge.datasets import DIAGNOSES, DIAGNOSIS_WORDING_SETS, PBMC_CELL_TYPES, PBMC_WORDING_SETS

    for sets, classes, training in (
        (PBMC_WORDING_SETS, list(PBMC_CELL_TYPES), list(PBMC_CELL_TYPES.values())),
        (DIAGNOSIS_WORDING_SETS, list(DIAGNOSES), [f"Impression: {d}." for d in DIAGNOSES]),
    ):
        assert len(sets) >= 5
        for wording in sets.values():
            assert sorted(wording) == sorted(classes)
            assert len(set(wording.values())) == len(classes)  # no two classes worded alike
            assert not set(wording.values()) & set(training)  # never the training text
