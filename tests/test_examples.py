"""Every script under examples/ runs to completion on the offline default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))
# summarise_folder.py runs in test_demo.py, on the bridge the quick demo trained there: without
# --bridge it would train one of its own with the same pipeline (about 3 minutes on one float32 thread).
RUN_HERE = [path for path in EXAMPLES if path.name != "summarise_folder.py"]
# The plots each script writes (relative to its working directory, with its default --out).
PLOTS = {
    "encode_cohort.py": ["nob-encode-example/umap_by_diagnosis.png"],
    "train_from_config.py": ["nob-train-example/training_curves.png"],
    "zero_shot_cells.py": ["nob-cells-example/umap_zero_shot.png"],
}
# Smaller runs than the scripts' defaults, where a default is sized for a person trying it (the
# training example: 159 s with its defaults, 80 subjects and 8 contrastive epochs, against 74 s
# with these; one float32 thread on an AVX2 AMD EPYC, another process running beside each).
ARGUMENTS = {"train_from_config.py": ["--subjects", "40", "--contrastive-epochs", "3"]}


def test_the_plot_table_names_exactly_the_scripts_that_save_figures() -> None:
    plotting = {p.name for p in RUN_HERE if ".savefig(" in p.read_text(encoding="utf-8")}
    assert set(PLOTS) == plotting
    assert set(ARGUMENTS) <= {p.name for p in RUN_HERE}  # no arguments kept for a script that is gone


@pytest.mark.slow
@pytest.mark.parametrize("script", RUN_HERE, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(script), *ARGUMENTS.get(script.name, [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
    outputs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.suffix == ".png")
    assert outputs == sorted(PLOTS.get(script.name, []))  # the plots it promises, and no others
    for name in outputs:  # plots are real images: PNGs that decode to a picture with content
        from PIL import Image

        path = tmp_path / name
        assert path.stat().st_size > 10_000, name
        with Image.open(path) as image:
            assert image.format == "PNG", name
            image.load()  # decodes every pixel; a truncated or corrupt file raises here
            width, height = image.size
            extrema = image.convert("L").getextrema()
        assert width >= 200 and height >= 150, (name, image.size)
        assert extrema[0] < extrema[1], f"{name}: a blank image"
