"""Every script under examples/ runs to completion on the offline default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
    outputs = [p for p in tmp_path.rglob("*") if p.suffix == ".png"]
    assert all(p.stat().st_size > 10_000 for p in outputs)  # plots, where a script makes them, are real images
