"""The public surface: everything in __all__ imports, and importing the package stays light."""

from __future__ import annotations

import subprocess
import sys

import neuroomics_bridge


def test_every_public_name_resolves() -> None:
    for name in neuroomics_bridge.__all__:
        assert getattr(neuroomics_bridge, name) is not None, name


def test_import_does_not_load_heavy_libraries() -> None:
    heavy = "('torch', 'scanpy', 'faiss', 'transformers')"
    probe = f"import sys, neuroomics_bridge; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
