"""Alignment training on a tiny backbone: checkpoints, determinism, resume, both stages."""

from __future__ import annotations

import itertools
import json
import pickle
import re

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from neuroomics_bridge import CorruptFileError, DataError, MissingFileError
from neuroomics_bridge.bridge import Bridge
from neuroomics_bridge.config import BridgeConfig
from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder
from neuroomics_bridge.training import SafetensorsCheckpointIO, fit_alignment
from neuroomics_bridge.training.data import GROUP_BATCHES, SubjectSampler
from tests.steps import StepRecorder

SMALL = BridgeConfig(embed_dim=16, head_hidden=32, prefix_tokens=2)


@pytest.fixture(scope="module")
def encoded(small_cohort):
    split = small_cohort.split(seed=0)
    encoders = {
        "gene": GeneEncoder(n_components=8, n_top_genes=300),
        "brain": BrainEncoder("mni-gm-64", n_components=8),
    }
    cohort = small_cohort.encode(encoders, fit_on=split.train)
    return cohort, cohort.split(seed=0)


@pytest.fixture
def new_bridge(make_bridge):
    """A fresh, identically initialised bridge (seed 0) for the encoded cohort, on the shared
    tiny backbone or on ``backbone``."""
    return lambda backbone=None: make_bridge({"gene": 8, "brain": 8}, SMALL, seed=0, backbone=backbone)


def adapter_state(bridge: Bridge) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in bridge.adapters.state_dict().items()}


def test_checkpoint_io_round_trips_nested_state_without_pickle(tmp_path) -> None:
    shared = torch.arange(4.0)
    checkpoint = {
        "epoch": 3,
        "state_dict": {"w": torch.ones(2, 2), "b": shared},
        "optimizer_states": [
            {"state": {0: {"step": torch.tensor(5.0)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95)}]}
        ],
        "callbacks": {
            "ModelCheckpoint": {"best_model_score": shared, "best_model_path": "x.ckpt", "score": np.float32(1.5)}
        },
    }
    io = SafetensorsCheckpointIO()
    io.save_checkpoint(checkpoint, tmp_path / "a.ckpt")
    assert (tmp_path / "a.ckpt").read_bytes()[8:9] == b"{"  # a safetensors JSON header, not a pickle
    restored = io.load_checkpoint(tmp_path / "a.ckpt")
    assert restored["epoch"] == 3 and restored["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert list(restored["optimizer_states"][0]["state"]) == [0]  # integer keys survive
    torch.testing.assert_close(restored["callbacks"]["ModelCheckpoint"]["best_model_score"], shared)
    assert restored["callbacks"]["ModelCheckpoint"]["score"] == 1.5


def test_checkpoint_io_refuses_arbitrary_objects_and_pickles(tmp_path) -> None:
    io = SafetensorsCheckpointIO()
    with pytest.raises(DataError, match=r"checkpoint\['hyper_parameters'\]: a object cannot be stored"):
        io.save_checkpoint({"hyper_parameters": object()}, tmp_path / "b.ckpt")
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(CorruptFileError, match=r"evil\.ckpt"):
        io.load_checkpoint(tmp_path / "evil.ckpt")


def test_a_checkpoint_whose_skeleton_does_not_match_its_tensors_is_named(tmp_path) -> None:
    from safetensors.torch import save_file

    from neuroomics_bridge.training.checkpoint import CHECKPOINT_FORMAT

    path = tmp_path / "c.ckpt"
    with pytest.raises(MissingFileError, match=r"c\.ckpt: no such checkpoint"):
        SafetensorsCheckpointIO().load_checkpoint(path)
    save_file({"t0": torch.zeros(2)}, path)  # a safetensors file, but not one of our checkpoints
    with pytest.raises(CorruptFileError, match=rf"c\.ckpt: not a {re.escape(CHECKPOINT_FORMAT)} checkpoint"):
        SafetensorsCheckpointIO().load_checkpoint(path)
    for skeleton in ({}, {"skeleton": json.dumps({"__dict__": [["w", {"__tensor__": "t9"}]]})}):
        save_file({"t0": torch.zeros(2)}, path, metadata={"format": CHECKPOINT_FORMAT, **skeleton})
        with pytest.raises(CorruptFileError, match=r"c\.ckpt: its skeleton does not match its tensors \(KeyError"):
            SafetensorsCheckpointIO().load_checkpoint(path)


def test_contrastive_stage_learns_saves_checkpoints_and_is_seeded(new_bridge, encoded, tmp_path) -> None:
    cohort, split = encoded
    first = new_bridge()
    result = fit_alignment(first, cohort, "contrastive", split=split, max_epochs=6, root_dir=tmp_path / "a")
    losses = result.history.dropna(subset=["train/loss"]).groupby("epoch")["train/loss"].mean()
    assert losses.iloc[-1] < losses.iloc[0]
    assert result.best_checkpoint.is_file() and result.last_checkpoint.name == "last.ckpt"
    assert {"zero_shot/gene/accuracy", "recall@5/gene->brain"} <= set(result.metrics)
    assert "train/loss_gene-brain" in result.history.columns
    second = new_bridge()
    fit_alignment(second, cohort, "contrastive", split=split, max_epochs=6, root_dir=tmp_path / "b")
    for key, value in adapter_state(first).items():
        torch.testing.assert_close(adapter_state(second)[key], value, rtol=0, atol=0)
    for modality in ("gene", "brain"):  # the modality gap: the mean embedding of the training fold
        rows = split.train.present(modality)
        mean = first.embed(modality, split.train.features[modality][rows]).mean(axis=0)
        np.testing.assert_allclose(getattr(first.adapters, f"gap_{modality}").numpy(), mean, atol=1e-5)
    saved = [b.save_pretrained(tmp_path / name) / "adapters.safetensors" for b, name in ((first, "x"), (second, "y"))]
    assert saved[0].read_bytes() == saved[1].read_bytes()  # byte-identical adapter files


class StopAfterEpochs(Callback):
    """Ends training after ``epochs`` epochs, as a preempted job would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def test_resuming_from_last_matches_an_uninterrupted_run(new_bridge, encoded, tmp_path) -> None:
    cohort, split = encoded
    straight = new_bridge()
    fit_alignment(
        straight,
        cohort,
        "contrastive",
        split=split,
        max_epochs=4,
        root_dir=tmp_path / "straight",
        enable_checkpointing=True,
    )
    interrupted = new_bridge()
    stop = StopAfterEpochs(2)
    fit_alignment(
        interrupted, cohort, "contrastive", split=split, max_epochs=4, root_dir=tmp_path / "resumed", callbacks=[stop]
    )
    resumed, recorder = new_bridge(), StepRecorder()
    result = fit_alignment(
        resumed, cohort, "contrastive", split=split, max_epochs=4, root_dir=tmp_path / "resumed", ckpt_path="last",
        callbacks=[recorder],
    )  # fmt: skip
    assert sorted(set(recorder.epochs)) == [2, 3]  # resumed after the two finished epochs, not from scratch
    last = SafetensorsCheckpointIO().load_checkpoint(result.last_checkpoint)
    reference = SafetensorsCheckpointIO().load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == reference["epoch"] == 3
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=1e-6, atol=1e-7)


def test_prefix_stage_trains_only_the_projector(new_bridge, encoded, tmp_path) -> None:
    cohort, split = encoded
    bridge = new_bridge()
    before = adapter_state(bridge)
    model = bridge.backbone.model
    attention_before, seen = model.config._attn_implementation, set()
    other = "eager" if attention_before != "eager" else "sdpa"

    def record(_module, _args, kwargs) -> None:  # a packed batch attends with the implementation it carries
        packed = kwargs.get("packed_rows")
        seen.add(model.config._attn_implementation if packed is None else packed.attention)

    hook = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = fit_alignment(
            bridge, cohort, "prefix", split=split, max_epochs=2, root_dir=tmp_path, precision="32-true", attention=other
        )
    finally:
        hook.remove()
    assert seen == {other} and model.config._attn_implementation == attention_before  # switched for the fit only
    after = adapter_state(bridge)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("projector.") for k in changed)
    assert {"prefix/perplexity_matched", "prefix/perplexity_shuffled"} <= set(result.metrics)
    assert np.isfinite(result.metrics["prefix/perplexity_matched"])


class BatchRecorder(Callback):
    """Each training batch's subjects and the width of the backbone input it became."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int], int]] = []  # (epoch, subject indices, input width)
        self.lengths: dict[int, list[int]] = {}
        self._training = False

    def on_train_epoch_start(self, trainer, module) -> None:
        self.lengths[trainer.current_epoch] = module.stage_impl.row_lengths(module, trainer.current_epoch)

    def on_train_batch_start(self, trainer, module, batch, batch_index) -> None:
        self._training = True
        self.batches.append((trainer.current_epoch, batch["index"].tolist(), 0))

    def on_train_batch_end(self, *args) -> None:
        self._training = False

    def decoder_input(self, _module, _args, kwargs) -> None:
        if self._training:
            epoch, rows, _ = self.batches[-1]
            packed = kwargs.get("packed_rows")  # a packed batch keeps its padded layout's width here
            self.batches[-1] = (epoch, rows, kwargs["inputs_embeds"].shape[1] if packed is None else packed.longest)


def test_prefix_stage_can_batch_rows_of_similar_length(new_bridge, encoded, tmp_path) -> None:
    cohort, split = encoded
    bridge = new_bridge()
    recorder = BatchRecorder()
    hook = bridge.backbone.model.get_decoder().register_forward_pre_hook(recorder.decoder_input, with_kwargs=True)
    try:
        fit_alignment(
            bridge, cohort, "prefix", split=split, max_epochs=2, root_dir=tmp_path, callbacks=[recorder], batch_size=6,
            group_by_length=True,
        )  # fmt: skip
    finally:
        hook.remove()
    n_train = split.train.n_subjects
    assert n_train <= 6 * GROUP_BATCHES  # one sorted run per epoch: batches are slices of one length order
    for epoch, lengths in recorder.lengths.items():
        batches = [(rows, width) for e, rows, width in recorder.batches if e == epoch]
        assert sorted(i for rows, _ in batches for i in rows) == list(range(n_train))  # every subject once
        spans = sorted((min(lengths[i] for i in rows), max(lengths[i] for i in rows)) for rows, _ in batches)
        assert all(low >= previous_high for (_, previous_high), (low, _) in itertools.pairwise(spans))
        # the row lengths are the real ones: [prefix][prompt][report][EOS] up to the context, padded to the longest
        prefix, context = bridge.adapters.projector.n_tokens, bridge.backbone.context_length
        assert [width for _, width in batches] == [
            min(prefix + max(lengths[i] for i in rows) + 1, context) for rows, _ in batches
        ]
    assert recorder.lengths[0] != recorder.lengths[1]  # layouts, hence prompts, are drawn afresh each epoch

    plain = BatchRecorder()  # the default: the plain seeded order
    fit_alignment(
        new_bridge(), cohort, "prefix", split=split, max_epochs=1, root_dir=tmp_path / "plain", callbacks=[plain],
        batch_size=6,
    )  # fmt: skip
    order = list(SubjectSampler(n_train, seed=0, shuffle=True))
    assert [rows for _, rows, _ in plain.batches] == [order[s : s + 6] for s in range(0, n_train, 6)]


def test_length_grouped_orders_are_seeded_complete_and_shard_like_one_process() -> None:
    lengths = [(7 * i) % 23 for i in range(50)]

    def order(epoch: int, *, rank: int = 0, world_size: int = 1, batch_size: int = 4) -> list[int]:
        sampler = SubjectSampler(
            50, seed=1, shuffle=True, rank=rank, world_size=world_size, lengths=lambda _: lengths, batch_size=batch_size
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    first = order(0)
    assert sorted(first) == list(range(50)) and first == order(0) and first != order(1)
    batches = [first[s : s + 4] for s in range(0, 48, 4)]  # 12 whole batches, then a short one of 2
    padded = sum(4 * max(lengths[i] for i in rows) for rows in batches)
    plain = list(SubjectSampler(50, seed=1, shuffle=True))
    assert padded < sum(4 * max(lengths[i] for i in plain[s : s + 4]) for s in range(0, 48, 4))
    last_run = set(plain[32:])  # runs of 8 batches: 32 subjects, then the last 18
    assert set(first[48:]) <= last_run  # the short last batch holds the last run's two shortest and stays last
    assert max(lengths[i] for i in first[48:]) <= min(lengths[i] for i in last_run - set(first[48:]))
    shards = [order(0, rank=r, world_size=2, batch_size=2) for r in (0, 1)]
    assert [sorted(shards[0][k : k + 2] + shards[1][k : k + 2]) for k in range(0, 24, 2)] == [
        sorted(b) for b in batches
    ]
    with pytest.raises(DataError, match="expected 50 row lengths, got 3"):
        list(SubjectSampler(50, seed=1, shuffle=True, lengths=lambda _: [1, 2, 3]))


def test_prefix_stage_with_lora_trains_it_inside_the_backbone_and_saves_it_with_the_bridge(
    tiny_model_dir, encoded, tmp_path, new_bridge
) -> None:
    from neuroomics_bridge import TextBackbone
    from neuroomics_bridge.config import LoRAConfig

    cohort, split = encoded
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    base = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    bridge = new_bridge(backbone)
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0)
    fit_alignment(
        bridge, cohort, "prefix", split=split, max_epochs=2, root_dir=tmp_path / "run", precision="32-true", lora=lora
    )
    trained = bridge.lora_state()
    assert trained and any(float(v.abs().sum()) > 0 for k, v in trained.items() if "lora_B" in k)  # B starts at 0
    current = {k.replace(".base_layer", ""): v for k, v in backbone.model.state_dict().items() if "lora_" not in k}
    assert current.keys() == base.keys()
    for key, value in base.items():  # the backbone's own weights are untouched
        torch.testing.assert_close(current[key], value, rtol=0, atol=0)
    saved = bridge.save_pretrained(tmp_path / "bridge")
    assert (saved / "backbone_lora.safetensors").is_file()
    reloaded = Bridge.from_pretrained(saved, backbone=TextBackbone.from_pretrained(tiny_model_dir, dtype="float32"))
    for key, value in trained.items():
        torch.testing.assert_close(reloaded.lora_state()[key], value, rtol=0, atol=0)
    (saved / "backbone_lora.safetensors").unlink()
    with pytest.raises(MissingFileError, match=r"backbone_lora\.safetensors: missing; .*config\.json records LoRA"):
        Bridge.from_pretrained(saved, backbone=TextBackbone.from_pretrained(tiny_model_dir, dtype="float32"))
    bridge.text_encoder._directory = tmp_path / "fresh-cache"  # texts encoded now, after training ...
    plain = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32")  # ... use the base weights only
    expected = plain.encode([bridge.config.text_template.format(text="a new text")], pooling=bridge.config.text_pooling)
    torch.testing.assert_close(bridge.text_encoder.encode(["a new text"]), expected)
    with pytest.raises(DataError, match="prefix stage only"):
        fit_alignment(new_bridge(backbone), cohort, "contrastive", split=split, root_dir=tmp_path / "c", lora=lora)
    with pytest.raises(DataError, match=r"lora: the bridge already holds LoRA .*r=4.*; got .*r=16"):
        fit_alignment(bridge, cohort, "prefix", split=split, root_dir=tmp_path / "again", lora=LoRAConfig(r=16))


def test_a_cohort_that_does_not_fit_the_bridge_is_refused(make_bridge, encoded, tmp_path) -> None:
    cohort, split = encoded
    bridge = make_bridge({"gene": 8}, SMALL)
    with pytest.raises(DataError, match=r"cohort modalities \['brain', 'gene'\] differ from the bridge's \['gene'\]"):
        fit_alignment(bridge, cohort, split=split, root_dir=tmp_path)


def test_prefix_stage_can_train_through_the_compiled_decoder(new_bridge, encoded, tmp_path, monkeypatch) -> None:
    cohort, split = encoded
    bridge = new_bridge()
    decoder = bridge.backbone.model.get_decoder()
    compiled_calls: list[bool] = []

    def spy_compile(module: torch.nn.Module, **options: object) -> object:
        assert module is decoder and options == {"dynamic": True, "options": {"emulate_precision_casts": True}}

        def run(**inputs: object) -> object:
            compiled_calls.append(torch.is_grad_enabled())
            return module(**inputs)

        return run

    monkeypatch.setattr(torch, "compile", spy_compile)
    recorder = BatchRecorder()
    fit_alignment(
        bridge, cohort, "prefix", split=split, max_epochs=2, root_dir=tmp_path, precision="32-true",
        compile_training=True, callbacks=[recorder],
    )  # fmt: skip
    # every training step, no validation forward; the first step one more, whose backward compiles ahead
    assert len(compiled_calls) == len(recorder.batches) + 1 > 1 and all(compiled_calls)
    bridge.backbone.last_hidden_state(input_ids=torch.tensor([[5, 6, 7]]))
    assert len(compiled_calls) == len(recorder.batches) + 1  # the compiled graph is gone after the fit


class FailAtStep(Callback):
    """Raises in the given training step, as a crash mid-fit would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index: int) -> None:
        if batch_index == self.step:
            raise RuntimeError("crash mid-fit")


def test_a_failed_fit_puts_the_backbone_back(new_bridge, encoded, tmp_path, monkeypatch) -> None:
    cohort, split = encoded
    bridge = new_bridge()
    model = bridge.backbone.model
    attention_before = model.config._attn_implementation
    other = "eager" if attention_before != "eager" else "sdpa"
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)  # "compiled" at once
    with pytest.raises(RuntimeError, match="crash mid-fit"):
        fit_alignment(
            bridge, cohort, "prefix", split=split, max_epochs=1, root_dir=tmp_path, precision="32-true",
            attention=other, compile_training=True, callbacks=[FailAtStep(1)],
        )  # fmt: skip
    assert model.config._attn_implementation == attention_before
    assert bridge.backbone._training_decoder is None
