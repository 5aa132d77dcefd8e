"""The public surface: everything in __all__ imports, and importing the package stays light."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import neuroomics_bridge

PACKAGE = neuroomics_bridge.__name__


def _run_clean(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (nothing imported yet); a failed assertion fails the test."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("name", neuroomics_bridge.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(neuroomics_bridge, name)
    assert value is not None, name
    assert getattr(neuroomics_bridge, name) is value  # cached: a second lookup gives the same object
    if name == "__version__":
        assert isinstance(value, str) and value.count(".") >= 2
    elif isinstance(value, types.ModuleType):
        assert value.__name__ == f"{PACKAGE}.{name}", value
    elif inspect.isclass(value) or inspect.isfunction(value):
        assert value.__name__ == name, value  # the export is the object of that name, not an alias
        assert value.__module__.startswith(f"{PACKAGE}."), value.__module__
        defining = sys.modules[value.__module__]
        assert getattr(defining, name) is value
    else:  # a constant (RESEARCH_NOTICE)
        assert isinstance(value, str) and value.strip(), name


def test_all_is_sorted_unique_and_listed_by_dir() -> None:
    exported = neuroomics_bridge.__all__
    assert exported == sorted(set(exported))
    assert set(exported) <= set(dir(neuroomics_bridge))
    with pytest.raises(AttributeError, match=r"module 'neuroomics_bridge' has no attribute 'NoSuchName'"):
        neuroomics_bridge.NoSuchName  # noqa: B018


def test_evaluation_exports_resolve_and_are_listed() -> None:
    from neuroomics_bridge import evaluation

    assert set(evaluation.__all__) <= set(dir(evaluation))
    for name in evaluation.__all__:
        value = getattr(evaluation, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith(f"{PACKAGE}.evaluation."), (name, value.__module__)


def test_import_does_not_load_heavy_libraries() -> None:
    heavy = "('torch', 'scanpy', 'faiss', 'transformers')"
    probe = f"import sys, neuroomics_bridge; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_model_cards_are_read_without_torch() -> None:
    result = _run_clean(
        "import sys, neuroomics_bridge as n\n"
        "card = n.get_card('me-llama-13b')\n"
        "cards = n.list_cards()\n"
        "assert card.id == 'me-llama-13b', card\n"
        "assert 'me-llama-13b' in [c.id for c in cards], cards\n"
        "assert 'torch' not in sys.modules, 'reading model cards imported torch'\n"
        "print('ok')\n"
    )
    assert result.stdout.strip() == "ok"


def test_saved_benchmark_runs_are_loaded_and_compared_without_torch(tmp_path: Path) -> None:
    metadata = {"backbone": "m", "adapter": None, "mode": "loglik", "shots": 0, "seed": 0, "limit": None,
                "prompt_format": "chat", "dtype": "float32", "data": {"medqa": {"sha256": "abc"}}}  # fmt: skip
    for name, accuracy in (("before", 0.3), ("after", 0.5)):
        result = {"family": "qa", "mode": "loglik", "shots": 0, "n": 100, "primary": "accuracy",
                  "metrics": {"accuracy": accuracy, "accuracy_stderr": 0.05}}  # fmt: skip
        run = {"metadata": metadata, "results": {"medqa": result}}
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    result = _run_clean(
        "import sys\n"
        "from neuroomics_bridge.evaluation import BenchmarkRun, compare_runs\n"
        f"before = BenchmarkRun.load({str(tmp_path / 'before.json')!r})\n"
        f"after = BenchmarkRun.load({str(tmp_path / 'after.json')!r})\n"
        "assert after.headline() == {'medqa': ('accuracy', 0.5)}, after.headline()\n"
        "table = compare_runs(before, after)\n"
        "assert '| medqa | accuracy | 0.300 | 0.500 | +0.200 |' in table, table\n"
        "assert 'torch' not in sys.modules, 'loading or comparing benchmark runs imported torch'\n"
        "print('ok')\n"
    )
    assert result.stdout.strip() == "ok"


def test_a_saved_bridge_writes_reports_without_importing_the_training_libraries(make_bridge, tmp_path: Path) -> None:
    """open_clip and Lightning, which only training needs, cost a report-writing process seconds to import."""
    make_bridge().save_pretrained(tmp_path / "bridge")
    result = _run_clean(
        "import sys, numpy as np\n"
        "from neuroomics_bridge import Bridge\n"
        f"bridge = Bridge.from_pretrained({str(tmp_path / 'bridge')!r})\n"
        "[report] = bridge.generate_report({'gene': np.ones((1, 6), np.float32)}, max_new_tokens=2)\n"
        "assert report.notice, report\n"
        "print(sorted(m for m in ('open_clip', 'lightning') if m in sys.modules))\n"
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_indexing_in_a_bridges_space_loads_neither_the_backbone_nor_transformers(make_bridge, tmp_path: Path) -> None:
    """``nob index --bridge`` applies the adapters' heads alone (importing transformers and reading
    the backbone took most of each call)."""
    import numpy as np
    import pandas as pd

    bridge = make_bridge()
    bridge.save_pretrained(tmp_path / "bridge")
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    table = pd.DataFrame(x, columns=[f"gene_{i}" for i in range(6)]).assign(subject_id=[f"s{i}" for i in range(5)])
    table.to_parquet(tmp_path / "v.parquet")
    np.save(tmp_path / "expected.npy", bridge.embed("gene", x))
    result = _run_clean(
        "import sys, numpy as np\n"
        "from neuroomics_bridge.inference import build_index\n"
        f"index = build_index({str(tmp_path / 'v.parquet')!r}, 'gene', {str(tmp_path / 'idx')!r}, "
        f"bridge_dir={str(tmp_path / 'bridge')!r})\n"
        f"expected = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "found = index.search(expected, 1)\n"
        "assert found.ids == [[f's{i}'] for i in range(5)], found  # each subject's own aligned vector\n"
        "assert np.allclose(found.scores, 1, atol=1e-5), found.scores\n"
        "print(sorted(m for m in ('transformers', 'lightning') if m in sys.modules))\n"
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
