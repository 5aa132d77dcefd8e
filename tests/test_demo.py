"""`nob demo --quick` end to end, offline, then the trained bridge reused by `nob report`, `encode`, `index`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from neuroomics_bridge import RESEARCH_NOTICE
from neuroomics_bridge.datasets import synthetic_cohort

pytestmark = pytest.mark.slow


OFFLINE = Path(__file__).parent / "offline"  # its sitecustomize makes every socket connection fail


def nob(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``nob`` offline: Hugging Face told so, and any network connection an error."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "neuroomics_bridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"] or "")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    result = nob("demo", "--quick", "--out", "out", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report/label_accuracy" in result.stdout and RESEARCH_NOTICE in result.stdout
    assert "GPU available" not in result.stderr and "Converting" not in result.stderr  # progress lines only
    return folder / "out"


def test_quick_demo_writes_a_page_whose_images_all_exist(demo_dir) -> None:
    page = (demo_dir / "index.html").read_text()
    assert RESEARCH_NOTICE in page
    parser = Images()
    parser.feed(page)
    assert len(parser.sources) == 4  # curves, aligned space, retrieval matrix, report facts
    for source in parser.sources:
        image = demo_dir / source
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000


def test_quick_demo_records_metrics_reports_and_a_reusable_bridge(demo_dir) -> None:
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert {
        "zero_shot/gene/accuracy",
        "prefix/perplexity_gap",
        "report/label_accuracy",
        "report/label_accuracy_shuffled",
    } <= set(metrics)
    reports = [json.loads(line) for line in (demo_dir / "reports.jsonl").read_text().splitlines()]
    assert reports and all(r["notice"] == RESEARCH_NOTICE and r["evidence"]["neighbours"] for r in reports)
    assert {p.name for p in (demo_dir / "bridge").iterdir()} >= {
        "adapters.safetensors",
        "config.json",
        "README.md",
        "encoders",
        "references",
    }


def test_trained_bridge_reports_encodes_and_indexes_a_users_folder(demo_dir, tmp_path) -> None:
    cohort = synthetic_cohort(10, seed=42, cells_per_subject=6, missing_rate=0.2)
    data = cohort.to_files(tmp_path / "my_cohort")
    bridge = str(demo_dir / "bridge")
    result = nob(
        "report", "--bridge", bridge, "--data", str(data), "--out", "reports.jsonl", "--batch-size", "4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in (tmp_path / "reports.jsonl").read_text().splitlines()]
    assert [r["subject_id"] for r in reports] == cohort.subject_ids
    lacking = [r for r in reports if r["evidence"]["absent"]]
    assert lacking and all(
        "No " in r["sections"]["Genetic profile"] or "No " in r["sections"]["Imaging profile"] for r in lacking
    )
    assert (
        nob(
            "encode", "--encoders", f"{bridge}/encoders", "--data", str(data), "--out", "v.parquet", cwd=tmp_path
        ).returncode
        == 0
    )
    built = nob(
        "index",
        "build",
        "--vectors",
        "v.parquet",
        "--modality",
        "gene",
        "--bridge",
        bridge,
        "--out",
        "idx",
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    found = nob(
        "index",
        "search",
        "--index",
        "idx",
        "--vectors",
        "v.parquet",
        "--modality",
        "brain",
        "--bridge",
        bridge,
        "--k",
        "3",
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in found.stdout.splitlines()]
    assert found.returncode == 0 and lines and all(len(line["neighbours"]) == 3 for line in lines)


@pytest.mark.parametrize("problem", ["missing", "malformed"])
def test_a_bad_data_folder_exits_2_with_one_line(demo_dir, tmp_path, problem: str) -> None:
    data = tmp_path / "data"
    if problem == "malformed":
        data.mkdir()
        (data / "reports.csv").write_text("id,text\ns1,hello\n")
    for command in (
        ["demo", "--quick", "--data", str(data), "--out", "o"],
        ["report", "--bridge", str(demo_dir / "bridge"), "--data", str(data), "--out", "r.jsonl"],
    ):
        result = nob(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert str(data) in result.stderr
