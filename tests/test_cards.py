"""The model-card registry: shipped cards are valid, complete and true to their schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuroomics_bridge import ConfigError, get_card, list_cards, validate_cards
from neuroomics_bridge.backbone.cards import cards_dir, load_card

REQUIRED_IDS = {
    "me-llama-13b",
    "me-llama-13b-chat",
    "me-llama-70b",
    "meditron-7b",
    "meditron-70b",
    "pmc-llama-13b",
    "llama-2-7b",
    "smollm2-135m-instruct",
}
KB_SCHEMA_KEYS = {
    "id", "name", "modality", "domain", "summary", "arch", "repo", "weights", "tokenizer", "context_length",
    "checkpoints", "license", "datasets", "tasks", "how_to_infer", "tags", "verified", "last_updated", "notes",
}  # fmt: skip


def test_every_shipped_card_is_valid() -> None:
    results = validate_cards()
    assert {Path(name).stem for name in results} >= REQUIRED_IDS
    assert all(problem is None for problem in results.values()), results


def test_cards_keep_the_knowledge_base_schema_and_registry_fields() -> None:
    for file in sorted(cards_dir().glob("*.yaml")):
        raw = yaml.safe_load(file.read_text())
        assert set(raw) >= KB_SCHEMA_KEYS, f"{file.name} lacks {KB_SCHEMA_KEYS - set(raw)}"
        assert {"family", "citation", "intended_use", "limitations", "chat_template", "dtype"} <= set(raw)
        assert raw["weights"]["source"] in {"bundled", "local", "gated"}


def test_card_round_trips_through_yaml(tmp_path: Path) -> None:
    card = get_card("me-llama-70b")
    card.to_yaml(tmp_path / "me-llama-70b.yaml")
    assert load_card(tmp_path / "me-llama-70b.yaml") == card


def test_me_llama_cards_record_the_papers_recipe() -> None:
    card = get_card("me-llama-13b")
    features = " ".join(card.arch.special_features)
    assert "15:1:4" in features and "129B" in features and "0.05 warmup" in features
    assert card.weights.source == "gated" and "physionet" in card.weights.url
    assert card.context_length == 4096 and "2402.12749" in card.citation


def test_only_the_default_is_bundled() -> None:
    bundled = [card.id for card in list_cards() if card.weights.source == "bundled"]
    assert bundled == ["smollm2-135m-instruct"]


def _write_card(folder: Path, card_id: str, **overrides) -> Path:
    raw = get_card("llama-2-7b").to_dict() | {"id": card_id} | overrides
    path = folder / f"{card_id}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"context_length": 1234}, "differs from arch.context_length"),
        ({"dtype": "int4"}, "dtype: expected one of"),
        ({"chat_template": "{% for m in messages %}"}, "chat_template does not render"),
        ({"chat_template": "Assistant:"}, "drops the message content"),
        ({"weights": {"source": "gated"}}, "needs a 'url'"),
        ({"weights": {"source": "bundled", "url": "x"}}, r"needs \['package', 'module', 'file'\]"),
        ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_invalid_cards_are_reported_with_the_reason(tmp_path: Path, overrides: dict, message: str) -> None:
    path = _write_card(tmp_path, "broken-card", **overrides)
    with pytest.raises(ConfigError, match=message):
        load_card(path)
    assert validate_cards(tmp_path)["broken-card.yaml"] is not None


def test_card_id_must_match_its_file_name(tmp_path: Path) -> None:
    path = _write_card(tmp_path, "some-id")
    path.rename(tmp_path / "other-name.yaml")
    with pytest.raises(ConfigError, match="differs from the file name"):
        load_card(tmp_path / "other-name.yaml")
