"""Instruction tuning: records, response-only loss, LoRA adapters saved alone, merging, learning."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from neuroomics_bridge import RESEARCH_NOTICE, CorruptFileError, MissingFileError, TextBackbone
from neuroomics_bridge.data.instructions import (
    TASK_TEMPLATES,
    InstructionRecord,
    read_instructions,
    synthetic_instructions,
    user_turn,
)
from neuroomics_bridge.errors import ConfigError, DataError
from neuroomics_bridge.training.args import INSTRUCT_OPTIMIZER
from neuroomics_bridge.training.data import SubjectSampler
from neuroomics_bridge.training.instruct import (
    InstructionDataModule,
    InstructionTuneModule,
    LoRAConfig,
    evaluate_tasks,
    instruction_tune,
    load_lora,
    merge_lora,
    tokenize_record,
)

RECORD = InstructionRecord("classification", "Diagnosis?", "Resting tremor and rigidity.", "Parkinson's disease")


def test_synthetic_records_cover_every_task_and_read_back(tmp_path) -> None:
    from neuroomics_bridge.data.instructions import write_instructions

    records = synthetic_instructions(20, seed=0)
    assert {r.task for r in records} == set(TASK_TEMPLATES)
    path = write_instructions(records, tmp_path / "records.jsonl")
    assert read_instructions(path) == records
    assert "Answer with entailment, neutral or contradiction." in user_turn(next(r for r in records if r.task == "nli"))


def test_a_null_input_is_no_input_not_the_text_none(tmp_path) -> None:
    (tmp_path / "records.jsonl").write_text(
        json.dumps({"task": "qa", "instruction": "Q?", "input": None, "output": "A"})
    )
    (record,) = read_instructions(tmp_path / "records.jsonl")
    assert record.input == ""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"records.jsonl:2: not valid JSON"),
        (json.dumps({"task": "qa", "instruction": "x"}), r"records.jsonl:2: .*missing or not text: \['output'\]"),
        (json.dumps({"task": "poetry", "instruction": "x", "output": "y"}), r"records.jsonl:2: unknown task 'poetry'"),
        (
            json.dumps({"task": "qa", "instruction": "x", "input": 3, "output": "y"}),
            r"missing or not text: \['input'\]",
        ),
        (json.dumps({"task": "qa", "instruction": "x", "output": "  "}), r"records.jsonl:2: 'output' is empty"),
    ],
)
def test_bad_records_name_the_file_line_and_field(tmp_path, line: str, message: str) -> None:
    good = json.dumps({"task": "qa", "instruction": "Q?", "input": "", "output": "A"})
    (tmp_path / "records.jsonl").write_text(f"{good}\n{line}\n")
    with pytest.raises(DataError, match=message):
        read_instructions(tmp_path / "records.jsonl")


def test_loss_masks_exactly_the_prompt(tiny_backbone) -> None:
    item = tokenize_record(tiny_backbone, RECORD, max_length=512)
    prompt = tiny_backbone.tokenize([tiny_backbone.chat(user_turn(RECORD))])[0]
    response = tiny_backbone.tokenize([RECORD.output], special_tokens=False)[0]
    assert item["input_ids"] == prompt + response + [tiny_backbone.tokenizer.eos_token_id]
    assert item["labels"] == [-100] * len(prompt) + response + [tiny_backbone.tokenizer.eos_token_id]
    short = tokenize_record(tiny_backbone, RECORD, max_length=len(prompt))
    assert len(short["input_ids"]) <= len(prompt) and short["labels"][-1] == tiny_backbone.tokenizer.eos_token_id
    with pytest.raises(DataError, match="max_length: expected at least 2 tokens"):
        tokenize_record(tiny_backbone, RECORD, max_length=1)  # nothing left to score: a NaN loss
    assert (
        tokenize_record(tiny_backbone, RECORD, max_length=len(item["input_ids"]) - 1)["input_ids"]
        == item["input_ids"][1:]
    )  # a short answer stays whole: the prompt loses its first token
    long = InstructionRecord("summarisation", "Summarise the note.", "Tremor.", " ".join(["rigidity"] * 60))
    whole = tokenize_record(tiny_backbone, long, max_length=512)
    one_over = tokenize_record(tiny_backbone, long, max_length=len(whole["input_ids"]) - 1)
    assert one_over["input_ids"] == whole["input_ids"][:-1]  # a long answer loses one token, not half of itself
    assert one_over["labels"] == whole["labels"][:-1]


def test_training_batches_group_records_of_similar_length_in_a_seeded_order(tiny_backbone) -> None:
    records = synthetic_instructions(40, seed=0)

    def batches(**options: object) -> list[list[int]]:
        data = InstructionDataModule(tiny_backbone, records, batch_size=4, max_length=512, **options)
        return [batch["attention_mask"].sum(dim=1).tolist() for batch in data.train_dataloader()]

    grouped, plain = batches(seed=3, group_by_length=True), batches(seed=3)  # grouping is opt-in
    assert grouped == batches(seed=3, group_by_length=True) and grouped != batches(seed=4, group_by_length=True)
    assert sorted(n for rows in grouped for n in rows) == sorted(n for rows in plain for n in rows)  # each record once

    def padding(batched: list[list[int]]) -> int:
        return sum(len(rows) * max(rows) - sum(rows) for rows in batched)

    assert padding(grouped) < padding(plain) / 2
    lengths = [len(tokenize_record(tiny_backbone, r, 512)["input_ids"]) for r in records]
    order = list(SubjectSampler(len(records), seed=3, shuffle=True))
    assert plain == [[lengths[i] for i in order[s : s + 4]] for s in range(0, len(records), 4)]


def test_response_only_loss_equals_transformers_own_loss(tiny_model_dir) -> None:
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    module = InstructionTuneModule(backbone, LoRAConfig(r=2, alpha=4, dropout=0.0))
    items = [tokenize_record(backbone, record, max_length=64) for record in synthetic_instructions(2, seed=0)[:3]]
    width = max(len(item["input_ids"]) for item in items)
    pad = backbone.tokenizer.pad_token_id
    batch = {
        "input_ids": torch.tensor([i["input_ids"] + [pad] * (width - len(i["input_ids"])) for i in items]),
        "attention_mask": torch.tensor(
            [[1] * len(i["input_ids"]) + [0] * (width - len(i["input_ids"])) for i in items]
        ),
        "labels": torch.tensor([i["labels"] + [-100] * (width - len(i["labels"])) for i in items]),
    }
    expected = module.model(**batch, use_cache=False).loss  # transformers' causal-LM loss, every position's logits
    torch.testing.assert_close(module._loss(batch), expected, rtol=1e-5, atol=1e-6)


def test_adapter_is_saved_alone_reloads_identically_and_merges(tmp_path, tiny_model_dir) -> None:
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    records = [RECORD] * 8
    options = {
        "max_epochs": 2,
        "batch_size": 4,
        "optimizer": dataclasses.replace(INSTRUCT_OPTIMIZER, lr=1e-2),
        "enable_progress_bar": False,
        "precision": "32-true",
    }
    module = instruction_tune(
        backbone, records, lora=LoRAConfig(r=4, alpha=8, dropout=0.0), root_dir=tmp_path / "run",
        output_dir=tmp_path / "adapter", **options,
    )  # fmt: skip
    assert RESEARCH_NOTICE in (tmp_path / "adapter" / "README.md").read_text()
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert saved and all("lora_" in name for name in saved)  # no base weights
    base_size = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size < base_size / 4
    ids = torch.tensor([tokenize_record(backbone, RECORD, 512)["input_ids"]])
    with torch.no_grad():
        tuned = module.model(input_ids=ids).logits
        fresh = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
        untuned = fresh.model(input_ids=ids).logits
        reloaded = load_lora(fresh, tmp_path / "adapter")
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tuned)
        merged = merge_lora(reloaded)
        torch.testing.assert_close(merged(input_ids=ids).logits, tuned, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(tuned, untuned)  # the adapter changed the model
    assert "lora_A" not in " ".join(n for n, _ in merged.named_parameters())
    pickled = tmp_path / "pickled"  # as peft writes with safe_serialization=False: refused before peft reads it
    pickled.mkdir()
    (pickled / "adapter_config.json").write_bytes((tmp_path / "adapter" / "adapter_config.json").read_bytes())
    (pickled / "adapter_model.bin").write_bytes(b"not read")
    for folder, missing in ((pickled, "adapter_model.safetensors"), (tmp_path / "nowhere", "adapter_config.json")):
        with pytest.raises(MissingFileError, match=rf"{folder.name}: no {missing}"):
            load_lora(TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu"), folder)
    damaged = tmp_path / "damaged"  # a copy damaged one way at a time: named, never peft's or json's traceback
    weights = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    config = (tmp_path / "adapter" / "adapter_config.json").read_text()
    for config_text, weight_bytes, message in (
        ("{not json", weights, r"adapter_config\.json: not valid JSON"),
        ("{}", weights, r"adapter_config\.json: expected a peft LoRA config \(peft_type 'LORA'\), got None"),
        (config, weights[:100], r"adapter_model\.safetensors: safetensors header claims"),
    ):
        damaged.mkdir(exist_ok=True)
        (damaged / "adapter_config.json").write_text(config_text)
        (damaged / "adapter_model.safetensors").write_bytes(weight_bytes)
        with pytest.raises(CorruptFileError, match=message):
            load_lora(fresh, damaged)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own")
    with pytest.raises(DataError, match=r"mine: expected a new or empty folder or a saved LoRA adapter"):
        instruction_tune(backbone, records, root_dir=tmp_path / "run2", output_dir=tmp_path / "mine", **options)
    assert not (tmp_path / "run2").exists()  # refused before training, not after it


def test_qlora_without_a_gpu_is_a_clear_error(tiny_model_dir) -> None:
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    with pytest.raises(ConfigError, match="qlora=true needs bitsandbytes and a CUDA GPU"):
        InstructionTuneModule(backbone, LoRAConfig(qlora=True))


def test_lora_targets_the_backbone_lacks_are_named_with_the_layers_it_has(tiny_model_dir, make_bridge) -> None:
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    misspelt = LoRAConfig(target_modules=["qproj", "vproj"])
    expected = r"target_modules: \['qproj', 'vproj'\] name no module of .*; its linear layers are \[.*'q_proj'.*\]"
    with pytest.raises(ConfigError, match=expected):  # before: peft's error, which lists none
        InstructionTuneModule(backbone, misspelt)
    bridge = make_bridge(backbone=backbone)
    with pytest.raises(ConfigError, match=expected):
        bridge.add_lora(misspelt)
    assert bridge.lora is None  # nothing was put in
    # as in peft, a target that matches nothing is skipped when others match, but named
    with pytest.warns(UserWarning, match=r"\['dense'\] name no module of .*; LoRA goes into the others"):
        bridge.add_lora(LoRAConfig(target_modules=["self_attn.q_proj", "dense"], dropout=0.0))
    assert bridge.lora is not None


@pytest.mark.slow
def test_a_short_lora_run_raises_classification_and_nli_accuracy(tmp_path) -> None:
    backbone = TextBackbone.from_pretrained("smollm2-135m-instruct", dtype="float32")
    records = [r for r in synthetic_instructions(80, seed=0) if r.task in ("classification", "nli")]
    train, test = records[:120], records[120:]
    before = evaluate_tasks(backbone, test, max_new_tokens=8)
    # one epoch of 15 steps at a high rate (one float32 thread, 2026-12-06: classification 0.0 -> 0.80
    # and 0.75, NLI 0.0 -> 0.65 and 0.65 on record seeds 0 and 1; two epochs at 1e-3 took twice as long)
    optimizer = dataclasses.replace(INSTRUCT_OPTIMIZER, lr=3e-3)
    instruction_tune(
        backbone, train, max_epochs=1, batch_size=8, optimizer=optimizer, root_dir=tmp_path, enable_progress_bar=False,
    )  # fmt: skip
    after = evaluate_tasks(backbone, test, max_new_tokens=8)
    assert after["classification/accuracy"] >= before["classification/accuracy"] + 0.3, (before, after)
    assert after["nli/accuracy"] > before["nli/accuracy"], (before, after)
