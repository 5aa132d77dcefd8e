"""Every YAML under configs/ loads into its config class and builds (litgpt's config hub test)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from neuroomics_bridge import BackboneConfig, ConfigError, TextBackbone
from neuroomics_bridge.backbone import text
from neuroomics_bridge.backbone.hardware import default_dtype, timed_cpu_dtype
from neuroomics_bridge.training.trainer import mixed_precision

CONFIGS = Path(__file__).parents[1] / "configs"
CONFIG_CLASSES = {"backbone.yaml": BackboneConfig}
LIGHTNING_CONFIGS = ["align_contrastive.yaml", "align_prefix.yaml", "pretrain.yaml", "instruct.yaml"]


def test_every_shipped_config_is_tested() -> None:
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(CONFIG_CLASSES) | set(LIGHTNING_CONFIGS)


@pytest.mark.slow
def test_alignment_configs_parse_and_build(tmp_path, tiny_model_dir) -> None:
    from neuroomics_bridge.training.recipes import AlignmentCLI

    small = ["--data.synthetic_subjects", "40", "--model.backbone.name", str(tiny_model_dir)]
    contrastive = AlignmentCLI(["--config", str(CONFIGS / "align_contrastive.yaml"), *small], run=False)
    assert contrastive.model.stage == "contrastive" and contrastive.trainer.max_epochs == 30
    assert contrastive.model.bridge.modality_dims == contrastive.datamodule.modality_dims
    saved = contrastive.model.bridge.save_pretrained(tmp_path / "bridge")
    prefix = AlignmentCLI(
        ["--config", str(CONFIGS / "align_prefix.yaml"), *small, "--model.init_from", str(saved)], run=False
    )
    assert prefix.model.stage == "prefix" and prefix.trainer.precision == mixed_precision()
    assert contrastive.trainer.precision == "32-true"


def test_pretrain_and_instruct_configs_parse_and_build(tiny_model_dir, monkeypatch) -> None:
    from neuroomics_bridge.training import trainer
    from neuroomics_bridge.training.args import INSTRUCT_EPOCHS, PRETRAIN_MAX_STEPS
    from neuroomics_bridge.training.instruct import instruction_tune
    from neuroomics_bridge.training.pretrain import continual_pretrain
    from neuroomics_bridge.training.recipes import InstructCLI, PretrainCLI

    monkeypatch.chdir(CONFIGS.parent)  # the configs name the sample data relative to the repository
    tiny = ["--data.backbone.name", str(tiny_model_dir)]
    pretrain = PretrainCLI(["--config", str(CONFIGS / "pretrain.yaml"), *tiny], run=False)
    assert pretrain.datamodule.corpus.weights == {"biomedical": 0.75, "clinical": 0.05, "general": 0.2}
    assert pretrain.model.sources == ["biomedical", "clinical", "general"] and pretrain.trainer.max_steps == 200
    assert pretrain.datamodule.scrub == {"clinical"}
    instruct = InstructCLI(["--config", str(CONFIGS / "instruct.yaml"), *tiny], run=False)
    assert instruct.model.lora.r == 8 and instruct.model.model.peft_config["default"].r == 8
    assert len(instruct.datamodule.train_items) > len(instruct.datamodule.val_items) > 0
    # A recipe without a length takes the Python entry point's default, from one definition.
    unset = PretrainCLI(["--config", str(CONFIGS / "pretrain.yaml"), *tiny, "--trainer.max_steps=-1"], run=False)
    assert (
        unset.trainer.max_steps
        == PRETRAIN_MAX_STEPS
        == inspect.signature(continual_pretrain).parameters["max_steps"].default
    )
    unset = InstructCLI(["--config", str(CONFIGS / "instruct.yaml"), *tiny, "--trainer.max_epochs=null"], run=False)
    assert (
        unset.trainer.max_epochs
        == INSTRUCT_EPOCHS
        == inspect.signature(instruction_tune).parameters["max_epochs"].default
    )
    for native, precision in ((False, "32-true"), (True, "bf16-mixed")):  # the machine's, not the YAML's
        monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda native=native: native)
        for cli, name in ((PretrainCLI, "pretrain.yaml"), (InstructCLI, "instruct.yaml")):
            assert cli(["--config", str(CONFIGS / name), *tiny], run=False).trainer.precision == precision


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIG_CLASSES))
def test_shipped_config_loads_and_builds(name: str) -> None:
    config = CONFIG_CLASSES[name].from_yaml(CONFIGS / name)
    built = TextBackbone.from_config(config)
    assert built.name == config.name and built.compile_decoding == config.compile_decoding
    assert built.quantization == (None if config.quantize == "none" else config.quantize)
    expected = default_dtype(built.device) if config.dtype == "auto" else getattr(torch, config.dtype)
    if config.dtype == "auto" and expected == torch.bfloat16 and built.device.type == "cpu":  # timed, then cached
        expected = timed_cpu_dtype(text._linear_shapes(Path(built.model.config.name_or_path)))
    assert built.dtype == expected


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = BackboneConfig(name="me-llama-13b", local_dir="/data/me-llama", dtype="bfloat16", kernel="packed")
    config.to_yaml(tmp_path / "backbone.yaml")
    assert BackboneConfig.from_yaml(tmp_path / "backbone.yaml") == config


def test_unknown_key_names_the_key_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: smollm2-135m-instruct\nprecision: bf16\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key\(s\) \['precision'\]"):
        BackboneConfig.from_yaml(tmp_path / "bad.yaml")


def test_bad_choice_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"BackboneConfig\.dtype: expected one of .* got 'int8'"):
        BackboneConfig(dtype="int8")
    with pytest.raises(ConfigError, match=r"BackboneConfig\.kernel: expected one of .* got 'mkl'"):
        BackboneConfig(kernel="mkl")


@pytest.mark.parametrize(
    ("given", "message"),
    [({"r": "8"}, r"r: expected int, got '8' \(str\)"),
     ({"r": 8.0}, r"r: expected int, got 8\.0 \(float\)"),
     ({"r": 0}, r"r: expected a positive integer rank, got 0"),
     ({"alpha": "16"}, r"alpha: expected float, got '16' \(str\)"),
     ({"alpha": 0}, r"alpha: expected a positive number, got 0"),
     ({"dropout": 1.5}, r"dropout: expected 0 <= dropout < 1, got 1\.5"),
     ({"target_modules": "q_proj"}, r"target_modules: expected list\[str\], got 'q_proj' \(str\)"),
     ({"target_modules": []}, r"target_modules: expected a list of module names .* got \[\]")],
)  # fmt: skip
def test_lora_settings_of_the_wrong_type_or_range_name_the_field(given: dict, message: str) -> None:
    from neuroomics_bridge.adapters.config import LoRAConfig

    # before, torch or peft failed on them at training time; built in Python or read from a file alike
    with pytest.raises(ConfigError, match=r"LoRAConfig\." + message):
        LoRAConfig(**given)
    with pytest.raises(ConfigError, match=r"lora\.yaml:.*" + message):
        LoRAConfig.from_dict(given, source="lora.yaml")
    assert LoRAConfig.from_dict({"r": 4, "target_modules": ["q_proj"]}, source="lora.yaml").r == 4
    built = LoRAConfig(alpha=16.0, target_modules=("q_proj", "v_proj"))  # a float alpha, a tuple of names
    assert LoRAConfig.from_dict(built.to_dict()) == dataclasses.replace(built, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [("embed_dim: '64'", r"embed_dim: expected int, got '64' \(str\)"),
     ("prefix_tokens: 2.5", r"prefix_tokens: expected int, got 2\.5 \(float\)"),
     ("cross_modal: 'yes'", r"cross_modal: expected bool, got 'yes' \(str\)"),
     ("report_covariates: age", r"report_covariates: expected tuple\[str, \.\.\.\], got 'age' \(str\)"),
     ("report_covariates: [age, 3]", r"report_covariates\[1\]: expected str, got 3 \(int\)"),
     ("init_temperature: '0.07'", r"init_temperature: expected float, got '0\.07' \(str\)"),
     ("embed_dim:", r"embed_dim: expected int, got None \(NoneType\)")],
)  # fmt: skip
def test_a_value_of_another_type_than_its_field_names_the_file_the_key_and_both_types(
    yaml_text: str, message: str, tmp_path: Path
) -> None:
    from neuroomics_bridge.adapters.config import BridgeConfig

    (tmp_path / "bridge.yaml").write_text(yaml_text + "\n")
    with pytest.raises(
        ConfigError, match=r"bridge\.yaml: BridgeConfig\." + message
    ):  # before: accepted, or a bare TypeError
        BridgeConfig.from_yaml(tmp_path / "bridge.yaml")
    (tmp_path / "good.yaml").write_text("embed_dim: 64\ninit_temperature: 1\nprefix_token_norm: null\n")
    loaded = BridgeConfig.from_yaml(tmp_path / "good.yaml")  # an int is a float; null where a field allows it
    assert (loaded.embed_dim, loaded.init_temperature, loaded.prefix_token_norm) == (64, 1, None)


def test_a_forced_kernel_is_taken_untimed_and_a_bad_one_refused_before_loading(tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setattr(text, "single_row_kernel", lambda model: pytest.fail("a kernel given is not timed"))
    assert getattr(TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", kernel="aten").model,
                   "_nob_single_row_aten", False)  # fmt: skip
    monkeypatch.setattr(text, "_load", lambda *args: pytest.fail("refused before the weights load"))
    with pytest.raises(ConfigError, match=r"TextBackbone\.kernel: expected one of .* got 'mkl'"):
        TextBackbone.from_pretrained(tiny_model_dir, kernel="mkl")


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        BackboneConfig.from_yaml(tmp_path / "broken.yaml")


def test_slurm_overrides_name_real_trainer_and_config_keys() -> None:
    import inspect

    import yaml
    from lightning.pytorch import Trainer

    root = Path(__file__).parents[1]
    overrides = yaml.safe_load((root / "examples" / "slurm" / "multinode_fsdp.yaml").read_text())
    assert set(overrides["trainer"]) <= set(inspect.signature(Trainer.__init__).parameters)
    base = yaml.safe_load((root / "configs" / "pretrain.yaml").read_text())
    for section in ("data", "model"):
        assert set(overrides[section]) <= set(base[section]) | {"gradient_checkpointing"}, section
    script = (root / "examples" / "slurm" / "pretrain.sbatch").read_text()
    for config in ("configs/pretrain.yaml", "examples/slurm/multinode_fsdp.yaml"):
        assert config in script and (root / config).is_file()
