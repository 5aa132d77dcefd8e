"""Continual pretraining: learns the target domain, records the mix, saves, reloads and resumes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Callback

from neuroomics_bridge import TextBackbone
from neuroomics_bridge.training.args import PRETRAIN_OPTIMIZER
from neuroomics_bridge.training.pretrain import continual_pretrain
from tests.steps import StepRecorder

SYMPTOMS = ["resting tremor", "memory decline", "bradykinesia", "apathy", "rigidity", "disinhibition"]
FINDINGS = ["hippocampal atrophy", "striatal volume loss", "frontal atrophy", "no focal atrophy"]
GENERAL = ["the train left", "a cat sat on the mat", "rain fell all day", "the market opened", "we walked home"]


def corpora(seed: int = 0) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    clinical = [
        f"Patient presents with {rng.choice(SYMPTOMS)}. MRI shows {rng.choice(FINDINGS)}. Seen 0{i % 9 + 1}/03/2021."
        for i in range(120)
    ]
    general = [" and ".join(rng.choice(GENERAL, 3)) + "." for _ in range(120)]
    return {"clinical": clinical, "general": general}


def run(tmp_path, model_dir, name: str, **kwargs):
    backbone = TextBackbone.from_pretrained(model_dir, dtype="float32", device="cpu")
    options = {
        "max_steps": 12,
        "block_size": 64,
        "batch_size": 4,
        "optimizer": dataclasses.replace(PRETRAIN_OPTIMIZER, lr=3e-3),
        "heldout_fraction": 0.2,
        "scrub": {"clinical"},
        "root_dir": tmp_path / name,
        "enable_progress_bar": False,
        "precision": "32-true",
        **kwargs,
    }
    return backbone, continual_pretrain(backbone, corpora(), {"clinical": 3, "general": 1}, **options)


def test_pretraining_lowers_target_perplexity_and_saves_a_reloadable_model(tmp_path, tiny_model_dir) -> None:
    backbone, result = run(tmp_path, tiny_model_dir, "run", output_dir=tmp_path / "model")
    assert result.perplexity_after["clinical"] < 0.7 * result.perplexity_before["clinical"], result
    assert result.mixture["token_shares"]["clinical"] == pytest.approx(0.75, abs=0.1)
    assert result.mixture["phi_replaced"]["clinical"]["DATE"] > 0  # scrubbed before tokenisation
    card = yaml.safe_load((tmp_path / "model" / "README.md").read_text().split("---")[1])
    assert card["mixture"]["weights"] == {"clinical": 0.75, "general": 0.25}
    assert card["heldout_perplexity"]["after"]["clinical"] == pytest.approx(result.perplexity_after["clinical"])
    reloaded = TextBackbone.from_pretrained(tmp_path / "model", dtype="float32", device="cpu")
    ids = torch.tensor([[5, 17, 33, 8]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(ids).logits, backbone.model(ids).logits)
    base_hash = TextBackbone.from_pretrained(tiny_model_dir).weights_hash
    assert backbone.weights_hash != base_hash and card["base_weights_sha256"] == base_hash


def test_the_after_perplexity_is_the_trained_models_whatever_the_validation_interval(tmp_path, tiny_model_dir) -> None:
    _, at_the_end = run(tmp_path, tiny_model_dir, "end")  # one validation, after the last step
    _, every_five = run(tmp_path, tiny_model_dir, "five", val_check_interval=5)  # at batches 5 and 10 of 12
    assert every_five.perplexity_before == at_the_end.perplexity_before
    assert every_five.perplexity_after == pytest.approx(at_the_end.perplexity_after, rel=1e-5)


class StopAfterSteps(Callback):
    """Ends training after ``steps`` optimizer steps, as a preempted job would."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def test_resuming_from_last_matches_an_uninterrupted_run(tmp_path, tiny_model_dir) -> None:
    whole, _ = run(tmp_path, tiny_model_dir, "whole", val_check_interval=6)
    run(tmp_path, tiny_model_dir, "resumed", val_check_interval=6, callbacks=[StopAfterSteps(6)])
    recorder = StepRecorder()
    resumed, _ = run(tmp_path, tiny_model_dir, "resumed", val_check_interval=6, ckpt_path="last", callbacks=[recorder])
    assert recorder.steps == list(range(6, 12))  # the six steps left, not all twelve again
    assert (tmp_path / "resumed" / "checkpoints" / "last.ckpt").read_bytes()[8:9] == b"{"  # safetensors, no pickle
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path, tiny_model_dir) -> None:
    plain, _ = run(tmp_path, tiny_model_dir, "plain", max_steps=2)
    checkpointed, _ = run(tmp_path, tiny_model_dir, "checkpointed", max_steps=2, gradient_checkpointing=True)
    assert checkpointed.model.is_gradient_checkpointing
    for (name, a), b in zip(plain.model.state_dict().items(), checkpointed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_pretraining_without_a_step_count_is_refused(tiny_model_dir) -> None:
    from types import SimpleNamespace

    from neuroomics_bridge import ConfigError
    from neuroomics_bridge.training.pretrain import ContinualPretrainModule

    module = ContinualPretrainModule(TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu"))
    module._trainer = SimpleNamespace(max_steps=-1)  # a trainer given epochs only: the stream never ends one
    with pytest.raises(ConfigError, match=r"continual pretraining: expected trainer max_steps > 0, got -1"):
        module.configure_optimizers()


def test_an_output_folder_it_may_not_replace_is_refused_before_training(tmp_path, tiny_model_dir) -> None:
    from neuroomics_bridge import DataError
    from neuroomics_bridge.training.pretrain import ContinualPretrainModule

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own")
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    with pytest.raises(DataError, match=r"mine: expected a new or empty folder or a saved model, found a folder"):
        ContinualPretrainModule(backbone, output_dir=tmp_path / "mine")  # the module nob pretrain builds, too


@pytest.mark.parametrize(("options", "message"), [
    ({"max_heldout_blocks": 0}, r"max_heldout_blocks: expected at least 1 block per source, got 0"),
    ({"corpora": {"clinical": ["Tremor.", float("nan")], "general": ["Text."]}},
     r"in-memory corpus source: document 1 is nan \(float\); expected text"),
])  # fmt: skip
def test_bad_pretraining_data_settings_are_named(tiny_model_dir, options: dict, message: str) -> None:
    from neuroomics_bridge import DataError
    from neuroomics_bridge.training.pretrain import PretrainDataModule

    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    sources = options.pop("corpora", corpora())
    with pytest.raises(DataError, match=message):  # before: no cap at all; an AttributeError in hashing
        data = PretrainDataModule(backbone, sources, {name: 1 for name in sources}, heldout_fraction=0.5, **options)
        data.heldout_blocks()
