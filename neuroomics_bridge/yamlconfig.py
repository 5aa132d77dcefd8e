"""The YAML-dataclass base: configs that round-trip through YAML.

Every component's config (beside the component it configures) subclasses :class:`YamlConfig`:
plain serialisable fields with defaults, validated in ``__post_init__``, variants made with :func:`dataclasses.replace`.
Unknown keys are an error naming the key and the file, never silently dropped, and so is a value
of another type than its field declares (``embed_dim: "64"``, ``report_covariates: age``).
"""

from __future__ import annotations

import dataclasses
import datetime
import numbers
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, get_args, get_origin, get_type_hints

import yaml

from neuroomics_bridge.errors import ConfigError
from neuroomics_bridge.io import atomic_write_text

__all__ = ["YamlConfig", "check_choice", "is_number"]


@dataclasses.dataclass
class YamlConfig:
    """Base class: ``from_dict`` / ``to_dict`` / ``from_yaml`` / ``to_yaml`` for dataclasses.

    Every field's value is checked against its declared type when the config is built, however it
    is built (``from_dict`` adds the file to the message); a subclass's ``__post_init__`` calls
    this one's before its own range and choice checks.
    """

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for field in dataclasses.fields(self):
            _check_type(hints[field.name], getattr(self, field.name), f"{type(self).__name__}.{field.name}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> Self:
        """Build from a mapping; nested configs are built recursively, lists become tuples.

        Parameters
        ----------
        data
            Field name -> value.
        source
            Where ``data`` came from, named in error messages (a file path, a YAML key).

        Raises
        ------
        ConfigError
            When ``data`` is not a mapping, has unknown keys, misses required ones, holds a value
            of another type than its field declares, or fails the class's validation.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown} for {cls.__name__}; expected some of {sorted(fields)}"
            )
        hints = get_type_hints(cls)
        values = {name: _coerce(hints[name], value, f"{source}:{name}") for name, value in data.items()}
        try:
            return cls(**values)
        except (TypeError, ConfigError) as err:  # the type, range and choice checks, named with the file
            raise ConfigError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (tuples as lists) suitable for YAML or JSON."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Self:
        """Read a YAML file written by :meth:`to_yaml` or by hand.

        Raises
        ------
        ConfigError
            When the file is not valid YAML, or as :meth:`from_dict` raises.
        """
        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: not valid YAML ({err})") from None
        return cls.from_dict(data or {}, source=str(file))

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the config as YAML, atomically."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Turn YAML values into the field's declared type where the YAML form differs."""
    hint = _strip_optional(hint)
    if isinstance(hint, type) and issubclass(hint, YamlConfig) and isinstance(value, Mapping):
        return hint.from_dict(value, source=where)
    if get_origin(hint) is tuple and isinstance(value, list):
        (item_hint, *_) = get_args(hint) or (Any,)
        return tuple(_coerce(item_hint, item, f"{where}[{i}]") for i, item in enumerate(value))
    if hint is str and isinstance(value, datetime.date):
        return value.isoformat()  # YAML reads 2025-11-19 as a date; the field keeps the text
    return value


def _check_type(hint: Any, value: Any, where: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` (already coerced) is of the declared type.

    Checks the shapes configs declare: ``bool``, ``int``, ``float`` (an int is a float), ``str``,
    optional ones, tuples, lists and dicts of them, and nested configs. ``Literal`` choices are
    left to the class's ``__post_init__``, which names them; other hints are not checked here.
    """
    if value is None and _strip_optional(hint) is not hint:
        return
    hint = _strip_optional(hint)
    origin, args = get_origin(hint), get_args(hint)
    if hint is bool:
        fits = isinstance(value, bool)
    elif hint is int:
        fits = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif hint is float:
        fits = is_number(value)
    elif hint is str:
        fits = isinstance(value, str)
    elif isinstance(hint, type) and issubclass(hint, YamlConfig):
        fits = isinstance(value, hint)
    elif origin in (tuple, list):  # either kind: YAML and JSON give lists, Python code often tuples
        fits = isinstance(value, (tuple, list))
        item_hint = args[0] if args and (origin is list or args[1:] in ((), (Ellipsis,))) else Any
        for i, item in enumerate(value if fits else ()):
            _check_type(item_hint, item, f"{where}[{i}]")
    elif origin is dict:
        fits = isinstance(value, Mapping)
        key_hint, item_hint = args or (Any, Any)
        for key, item in value.items() if fits else ():
            _check_type(key_hint, key, f"{where} key {key!r}")
            _check_type(item_hint, item, f"{where}.{key}")
    else:  # Literal, Any, unions of several types: the class validates them
        return
    if not fits:
        expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        raise ConfigError(f"{where}: expected {expected}, got {value!r} ({type(value).__name__})")


def _strip_optional(hint: Any) -> Any:
    if get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (int, float, numpy's), not a bool or numeric text: YAML
    reads ``true`` and ``"15"`` as such, and Python would count ``True`` as 1."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_choice(owner: str, key: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{owner}.{key}: expected one of {list(choices)}, got {value!r}")
