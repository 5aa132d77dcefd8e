"""Bridge on a tiny random backbone: embeddings, zero-shot, report likelihood, save/load."""

from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest
import torch
import yaml

from neuroomics_bridge import CorruptFileError, DataError, InvalidModelError, MissingFileError, TextBackbone
from neuroomics_bridge.backbone.cache import CachedTextEncoder
from neuroomics_bridge.bridge import Bridge
from neuroomics_bridge.config import BridgeConfig
from neuroomics_bridge.reports import RESEARCH_NOTICE, report_prompt

from .conftest import CLINICAL_SENTENCES

DIMS = {"gene": 6, "brain": 4}


@pytest.fixture
def bridge(make_bridge) -> Bridge:
    return make_bridge(DIMS, BridgeConfig(embed_dim=8, head_hidden=16, prefix_tokens=2), seed=0)


def test_embeddings_are_unit_vectors_and_absent_rows_stay_nan(bridge) -> None:
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    x[2] = np.nan
    embedded = bridge.embed("gene", x)
    assert embedded.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(embedded[[0, 1, 3]], axis=1), 1, rtol=1e-5)
    assert np.isnan(embedded[2]).all()


def test_wrong_modality_or_width_is_named(bridge) -> None:
    with pytest.raises(DataError, match=r"unknown modality 'protein'; this bridge has \['gene', 'brain'\]"):
        bridge.embed("protein", np.zeros((1, 6)))
    with pytest.raises(DataError, match=r"gene: expected shape \(n, 6\), got \(2, 5\)"):
        bridge.embed("gene", np.zeros((2, 5)))


def test_zero_shot_gives_probabilities_over_the_class_texts(bridge) -> None:
    classes = ["control", "patient", "other"]
    x = np.random.default_rng(1).normal(size=(5, 4))
    gap = torch.from_numpy(bridge.embed("brain", x[:2]).mean(axis=0))  # a calibration mean that matters
    bridge.adapters.gap_brain.copy_(gap)
    probabilities = bridge.zero_shot("brain", x, classes)
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    # A softmax over the learned-temperature similarities of the *centred* embedding to each class text.
    similarity = (bridge.embed("brain", x) - gap.numpy()) @ bridge.embed_text(classes).T
    scale = float(bridge.adapters.losses["brain-text"].similarity_scale())
    np.testing.assert_array_equal(probabilities.argmax(axis=1), similarity.argmax(axis=1))
    log_odds = np.log(probabilities) - np.log(probabilities[:, :1])
    np.testing.assert_allclose(log_odds, scale * (similarity - similarity[:, :1]), rtol=1e-4, atol=1e-4)


def test_zero_shot_picks_the_class_whose_text_a_subject_is_embedded_at(bridge, monkeypatch) -> None:
    classes = ["control", "Alzheimer's disease", "Parkinson's disease", "frontotemporal dementia"]
    texts = bridge.embed_text(classes)
    assert not bridge.adapters.gap_brain.any()  # uncalibrated: embeddings are used as they are
    monkeypatch.setattr(bridge, "embed", lambda modality, X: texts[np.asarray(X, dtype=int)[:, 0]])
    order = [2, 0, 3, 1, 1]  # subject i sits exactly on the text direction of class order[i]
    probabilities = bridge.zero_shot("brain", np.array(order)[:, None].repeat(4, axis=1), classes)
    assert probabilities.argmax(axis=1).tolist() == order
    assert (probabilities.max(axis=1) > 1 / len(classes)).all()


def test_prefix_treats_missing_modalities_as_absent(bridge) -> None:
    tokens = bridge.prefix({"gene": np.ones((3, 6), dtype=np.float32)})
    assert tokens.shape == (3, 4, bridge.backbone.hidden_size)
    projector = bridge.adapters.projector
    absent = torch.nn.functional.normalize(projector.absent["brain"], dim=-1) * projector.log_norm.exp()
    torch.testing.assert_close(tokens[0, 2:], absent)  # the learned "absent" tokens, at the soft-token norm


def test_report_likelihood_equals_transformers_own_loss_and_trains_only_the_projector(bridge) -> None:
    backbone = bridge.backbone
    features = {m: torch.randn(2, d) for m, d in DIMS.items()}
    present = {m: torch.ones(2, dtype=torch.bool) for m in DIMS}
    reports = CLINICAL_SENTENCES[:2]
    nll, counts = bridge.report_nll(features, present, reports)
    prefix = bridge.adapters.prefix(features, present)
    prompt = backbone.tokenize([report_prompt(bridge.config.report_prompt)])[0]
    for row, report in enumerate(reports):
        target = [*backbone.tokenize([report], special_tokens=False)[0], backbone.tokenizer.eos_token_id]
        embeds, mask = backbone.prefixed_inputs([prompt + target], prefix[row : row + 1])
        labels = torch.full(mask.shape, -100)
        labels[0, -len(target) :] = torch.tensor(target)
        reference = backbone.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
        assert int(counts[row]) == len(target)
        torch.testing.assert_close(nll[row] / counts[row], reference, rtol=1e-4, atol=1e-5)
    backbone.model.requires_grad_(False)
    nll.sum().backward()
    assert bridge.adapters.projector.expand["gene"].weight.grad is not None
    assert bridge.adapters.heads["gene"].norm.weight.grad is None


def test_text_cache_encodes_each_text_once_and_persists(tiny_backbone, tmp_path) -> None:
    cache = CachedTextEncoder(tiny_backbone, pooling="last", template="Note: {text}", directory=tmp_path)
    first = cache.encode(CLINICAL_SENTENCES[:4])
    again = cache.encode(CLINICAL_SENTENCES[2:6])
    assert cache.encoded_count == 6
    torch.testing.assert_close(again[:2], first[2:])
    direct = tiny_backbone.encode([f"Note: {t}" for t in CLINICAL_SENTENCES[:4]], pooling="last")
    torch.testing.assert_close(first, direct, atol=1e-5, rtol=1e-5)
    fresh = CachedTextEncoder(tiny_backbone, pooling="last", template="Note: {text}", directory=tmp_path)
    torch.testing.assert_close(fresh.encode(CLINICAL_SENTENCES[:6]), torch.cat([first, again[2:]]))
    assert fresh.encoded_count == 0


def test_text_cache_keeps_dtypes_poolings_and_weight_formats_apart(tiny_model_dir) -> None:
    folders = {
        CachedTextEncoder(TextBackbone.from_pretrained(tiny_model_dir, dtype=dtype), pooling=pooling).directory
        for dtype in ("float32", "bfloat16")
        for pooling in ("last", "mean")
    }
    assert len(folders) == 4
    formats = [{}, {"quantize": "int8"}, {"kernel": "bf16-copy"}]  # the same weight files, other vectors
    folders = [
        CachedTextEncoder(TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", **loading)).directory
        for loading in formats
    ]
    assert len(set(folders)) == 3 and folders[1].name.endswith("-int8")


def test_save_pretrained_writes_adapters_only_and_reloads_identically(bridge, tmp_path) -> None:
    bridge.card_info = {"metrics": {"zero_shot/gene/accuracy": 0.9}, "data_summary": "12 subjects"}
    folder = bridge.save_pretrained(tmp_path / "bridge")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapters.safetensors", "config.json"]
    from safetensors import safe_open

    with safe_open(folder / "adapters.safetensors", framework="pt") as handle:
        keys = list(handle.keys())
    backbone_keys = set(bridge.backbone.model.state_dict())
    assert keys and not set(keys) & backbone_keys and not any(k.startswith("model.") for k in keys)
    card = (folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["base_model"] == bridge.backbone.name and header["modalities"] == DIMS
    assert header["metrics"] == {"zero_shot/gene/accuracy": 0.9} and RESEARCH_NOTICE in card
    restored = Bridge.from_pretrained(folder, backbone=bridge.backbone)
    x = np.random.default_rng(2).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(restored.embed("gene", x), bridge.embed("gene", x))
    assert restored.card_info == bridge.card_info


def test_saved_adapters_load_without_the_backbone_and_embed_as_the_bridge_does(bridge, tmp_path) -> None:
    from neuroomics_bridge.bridge import embed_vectors, load_adapters

    folder = bridge.save_pretrained(tmp_path / "bridge")
    adapters = load_adapters(folder)
    x = np.random.default_rng(3).normal(size=(4, 6)).astype(np.float32)
    x[2] = np.nan  # an absent subject stays NaN
    adapters.train()  # embedding runs without dropout and leaves the mode as it was
    embedded = embed_vectors(adapters, "gene", x)
    assert adapters.training and adapters.heads["gene"].training
    np.testing.assert_array_equal(embedded, bridge.embed("gene", x))
    assert np.isnan(embedded[2]).all() and not np.isnan(embedded[[0, 1, 3]]).any()
    with pytest.raises(DataError, match=r"unknown modality 'rna'; this bridge has \['gene', 'brain'\]"):
        embed_vectors(adapters, "rna", x)
    x[1, 0] = np.nan
    with pytest.raises(DataError, match=r"gene: row 1 has NaN in column\(s\) \[0\] but not in all 6"):
        embed_vectors(adapters, "gene", x)
    config = json.loads((folder / "config.json").read_text())
    del config["backbone"]["hidden_size"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match=r"config\.json: expected backbone\.hidden_size, an integer; got None"):
        load_adapters(folder)
    del config["modality_dims"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match=r"config\.json: expected backbone .* entries; no 'modality_dims'$"):
        load_adapters(folder)


def test_saved_adapters_of_other_shapes_are_refused_by_file_and_key(bridge, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from neuroomics_bridge import BridgeBundle

    folder = bridge.save_pretrained(tmp_path / "bridge")
    weights = load_file(folder / "adapters.safetensors")
    key = next(k for k, v in weights.items() if v.ndim == 2)
    rows, columns = weights[key].shape
    save_file({**weights, key: torch.zeros(rows, columns + 1)}, folder / "adapters.safetensors")
    with pytest.raises(
        CorruptFileError, match=rf"adapters\.safetensors: .*{re.escape(key)}: expected \({rows}, {columns}\), got"
    ):
        Bridge.from_pretrained(folder, backbone=bridge.backbone)
    (folder / "bundle.json").write_text(json.dumps({"format": "neuroomics-bridge/bundle-v1"}))
    with pytest.raises(CorruptFileError, match=r"bundle\.json: expected 'parts', a list of folder names; got None"):
        BridgeBundle.load(folder, backbone=bridge.backbone)
    renamed = {("extra." + k if k == key else k): v for k, v in weights.items()}
    save_file(renamed, folder / "adapters.safetensors")
    with pytest.raises(
        CorruptFileError, match=rf"adapter weights do not match the config \(missing \['{re.escape(key)}'\]"
    ):
        Bridge.from_pretrained(folder, backbone=bridge.backbone)


def test_a_bundle_missing_a_part_or_its_encoders_is_named(bridge, tmp_path) -> None:
    from neuroomics_bridge import BridgeBundle

    folder = bridge.save_pretrained(tmp_path / "bridge")  # a bare bridge: no encoders, no references
    with pytest.raises(MissingFileError, match=r"bridge/encoders: missing; the fitted encoders"):
        BridgeBundle.load(folder, backbone=bridge.backbone, need_encoders=True)
    assert BridgeBundle.load(folder, backbone=bridge.backbone).encoders is None
    (folder / "bundle.json").write_text(json.dumps({"format": "neuroomics-bridge/bundle-v1", "parts": ["references"]}))
    with pytest.raises(MissingFileError, match=r"bridge/references: missing; .*bundle\.json lists it"):
        BridgeBundle.load(folder, backbone=bridge.backbone)


def test_held_out_metrics_choose_among_every_class_and_skip_a_modality_no_subject_has(bridge) -> None:
    from neuroomics_bridge.data import Cohort
    from neuroomics_bridge.evaluation.bridge_metrics import evaluate_bridge

    rng = np.random.default_rng(0)
    brain = np.full((6, 4), np.nan, dtype=np.float32)  # no subject of this fold has an image
    fold = Cohort([f"s{i}" for i in range(6)], {"gene": rng.normal(size=(6, 6)), "brain": brain},
                  reports=["Tremor."] * 6, labels=["AD", "PD"] * 3)  # fmt: skip
    chosen = []
    zero_shot = bridge.zero_shot

    def recording(modality, features, classes):
        chosen.append(list(classes))
        return zero_shot(modality, features, classes)

    bridge.zero_shot = recording
    metrics = evaluate_bridge(bridge, fold, classes=["AD", "HD", "PD"])  # HD: too rare to reach this fold
    assert chosen == [["AD", "HD", "PD"]]  # the gene modality only; among every class
    assert "zero_shot/gene/accuracy" in metrics and not any("brain" in name for name in metrics)
    evaluate_bridge(bridge, fold)
    assert chosen[-1] == ["AD", "PD"]  # by default, the fold's own labels


def test_loading_onto_another_backbone_is_refused(bridge, tmp_path, tiny_model_dir) -> None:
    from transformers import LlamaForCausalLM

    folder = bridge.save_pretrained(tmp_path / "bridge")
    other_dir = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other_dir)
    model = LlamaForCausalLM.from_pretrained(other_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(2)
    model.save_pretrained(other_dir)
    other = TextBackbone.from_pretrained(other_dir, dtype="float32")
    with pytest.raises(InvalidModelError, match=r"adapters were trained on backbone .* load the recorded backbone"):
        Bridge.from_pretrained(folder, backbone=other)


def test_damaged_or_incomplete_bridge_folders_are_named(bridge, tmp_path) -> None:
    folder = bridge.save_pretrained(tmp_path / "bridge")
    with pytest.raises(MissingFileError, match=r"config\.json: missing"):
        Bridge.from_pretrained(tmp_path, backbone=bridge.backbone)
    weights = folder / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    with pytest.raises(CorruptFileError, match=r"adapters\.safetensors"):
        Bridge.from_pretrained(folder, backbone=bridge.backbone)
    config = json.loads((folder / "config.json").read_text())
    config["format"] = "something-else"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match="expected format"):
        Bridge.from_pretrained(folder, backbone=bridge.backbone)


def test_a_bridge_alone_is_not_saved_over_a_bundle(bridge, tmp_path) -> None:
    from neuroomics_bridge import BridgeBundle
    from neuroomics_bridge.data import Cohort
    from neuroomics_bridge.retrieval import ReferenceSet

    rng = np.random.default_rng(0)
    fold = Cohort([f"s{i}" for i in range(6)], {"gene": rng.normal(size=(6, 6)), "brain": rng.normal(size=(6, 4))},
                  reports=["Tremor."] * 6, labels=["AD", "PD"] * 3)  # fmt: skip
    folder = BridgeBundle(bridge, references=ReferenceSet.build(bridge, fold)).save(tmp_path / "bundle")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DataError, match=r"bundle: a bridge bundle \(bundle\.json\); saving the bridge alone would"):
        bridge.save_pretrained(folder)  # would have replaced the folder, references and all
    assert sorted(p.name for p in folder.iterdir()) == before and "references" in before
    shutil.rmtree(folder / "references" / "gene")  # a lost index folder, which the manifest lists
    with pytest.raises(MissingFileError, match=r"references/gene: missing; references\.json lists a 'gene' index"):
        BridgeBundle.load(folder, backbone=bridge.backbone)


def test_a_damaged_adapter_file_or_config_is_named(bridge, tmp_path) -> None:
    folder = bridge.save_pretrained(tmp_path / "bridge")
    weights = folder / "adapters.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    key = next(k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2)
    header[key]["shape"][1] -= 1  # same size on disk, but the shape no longer fits its byte range
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)  # the spaces safetensors allows
    weights.write_bytes(data[:8] + text + data[8 + length :])
    with pytest.raises(CorruptFileError, match=r"adapters\.safetensors: damaged safetensors file"):
        Bridge.from_pretrained(folder, backbone=bridge.backbone)
    config = json.loads((folder / "config.json").read_text())
    del config["modality_dims"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptFileError, match=r"config\.json: expected backbone .* entries; no 'modality_dims'"):
        Bridge.from_pretrained(folder, backbone=bridge.backbone)
