"""Lazy re-exports (PEP 562): a package names what it exports; the module loads on first use.

One table per package (public name -> defining module) serves ``__getattr__``, ``__dir__`` and
``__all__``, so the three cannot drift apart, and ``import neuroomics_bridge`` (or reading a model
card) loads no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Parameters
    ----------
    package
        The package's ``__name__``.
    exports
        Public name -> module that defines it (a name that is itself a submodule maps to that
        submodule's full name and is returned as the module).
    namespace
        The package's ``globals()``; a loaded name is cached there.

    Returns
    -------
    tuple
        ``(__getattr__, __dir__)`` to assign in the package.
    """

    def __getattr__(name: str) -> Any:
        try:
            module = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        imported = importlib.import_module(module)
        value = imported if module == f"{package}.{name}" else getattr(imported, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
