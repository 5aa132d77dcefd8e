"""`nob demo --quick` end to end, offline, then the trained bridge reused by `nob report`, `encode`, `index`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from neuroomics_bridge import RESEARCH_NOTICE
from neuroomics_bridge.bridge.generation import ReportGenerationMixin
from neuroomics_bridge.datasets import synthetic_cohort
from neuroomics_bridge.inference import write_reports
from neuroomics_bridge.reports.report import REPORT_BATCH_SIZE

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


def nob_on_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``nob`` offline with stderr on a pseudo-terminal, as a person at a shell sees it."""
    import fcntl
    import pty
    import struct
    import termios

    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, like a terminal
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "neuroomics_bridge.cli", *args], stdout=subprocess.DEVNULL, stderr=secondary,
        cwd=cwd, env=env,
    )  # fmt: skip
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the process has exited
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    return process.wait(timeout=900), b"".join(chunks).decode(errors="replace")


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
    assert len(parser.sources) == 5  # curves, aligned space, retrieval matrix, report facts, reliability
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
    # 8 new tokens: nothing checked here (ids, order, the sections of absent data) comes from the
    # generated text, and decoding the default 80 took most of this test's time
    result = nob(
        "report", "--bridge", bridge, "--data", str(data), "--out", "reports.jsonl", "--batch-size", "4",
        "--max-new-tokens", "8", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "%|" not in result.stderr and "report:" not in result.stderr  # no progress bar in a pipe
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


def test_the_summarise_folder_example_reports_every_subject_with_a_trained_bridge(demo_dir, tmp_path) -> None:
    """examples/summarise_folder.py on the demo's bridge (tests/test_examples.py runs the others);
    the ten synthetic subjects it draws live in a temporary folder that is gone afterwards."""
    script = Path(__file__).parents[1] / "examples" / "summarise_folder.py"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, str(script), "--bridge", str(demo_dir / "bridge")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    page = (tmp_path / "reports.html").read_text()
    assert page.count(RESEARCH_NOTICE) == 10 and "10 reports" in result.stdout
    assert len([line for line in result.stdout.splitlines() if "[zero-shot: " in line]) == 10
    assert not list(scratch.glob("nob-example-cohort-*"))  # the drawn cohort was removed


def test_nob_report_decodes_each_chunk_of_subjects_as_one_batch(demo_dir, tmp_path, monkeypatch) -> None:
    decoded_together: list[int] = []
    generate_report = ReportGenerationMixin.generate_report

    def recorded(self, inputs, *args, batch_size: int = REPORT_BATCH_SIZE, **kwargs):
        decoded_together.append(batch_size)
        return generate_report(self, inputs, *args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(ReportGenerationMixin, "generate_report", recorded)
    data = synthetic_cohort(5, seed=7, cells_per_subject=4).to_files(tmp_path / "c")
    assert write_reports(demo_dir / "bridge", data, tmp_path / "a.jsonl", batch_size=3, max_new_tokens=4) == 5
    assert decoded_together == [3, 3]  # two chunks (3 + 2 subjects), each decoded at the chunk size
    decoded_together.clear()
    assert write_reports(demo_dir / "bridge", data, tmp_path / "b.jsonl", max_new_tokens=4) == 5
    assert decoded_together == [REPORT_BATCH_SIZE] == [64]


def test_report_shows_progress_bars_on_a_terminal(demo_dir, tmp_path) -> None:
    data = synthetic_cohort(6, seed=5, cells_per_subject=4).to_files(tmp_path / "c")
    bridge = str(demo_dir / "bridge")
    command = ["report", "--bridge", bridge, "--data", str(data), "--batch-size", "3", "--max-new-tokens", "4"]
    code, terminal = nob_on_terminal(*command, "--out", "b.jsonl", cwd=tmp_path)
    assert code == 0 and "report:" in terminal and "%|" in terminal and "batch" in terminal
    # in a pipe (every other nob call of these tests) there is no bar: see the report test above


INJECTED = '<b id="injected">bold</b><script>window.injected = true</script>'


@pytest.fixture(scope="module")
def evaluated(demo_dir, tmp_path_factory) -> Path:
    """``nob evaluate`` of the demo's bridge on another labelled folder, one report carrying markup."""
    folder = tmp_path_factory.mktemp("evaluate")
    cohort = synthetic_cohort(10, seed=42, cells_per_subject=6, missing_rate=0.1)
    cohort.reports[0] = f"{cohort.reports[0]} {INJECTED}"
    data = cohort.to_files(folder / "labelled")
    # 12 new tokens a report: what the tests check holds for reports of any length (with 80,
    # generation took 70 of the call's 95 s under cProfile, one float32 thread, AVX2 AMD EPYC)
    result = nob("evaluate", "--bridge", str(demo_dir / "bridge"), "--data", str(data), "--out", "ev", "--limit", "4",
                 "--max-new-tokens", "12", cwd=folder)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert RESEARCH_NOTICE in result.stdout and "report/prefix_only/diagnosis" in result.stdout
    return folder / "ev"


def test_evaluate_scores_a_labelled_folder_with_every_demo_metric(demo_dir, evaluated) -> None:
    metrics = json.loads((evaluated / "metrics.json").read_text())
    demo = json.loads((demo_dir / "metrics.json").read_text())
    assert metrics["evaluate/subjects"] == 4 and metrics["evaluate/excluded_reference_subjects"] == 0
    assert metrics["evaluate/max_new_tokens"] == 12  # --max-new-tokens reached generation's settings
    trained_only = {k for k in demo if k.startswith(("train/", "val/", "contrastive/", "prefix/loss"))}
    assert set(demo) - trained_only <= set(metrics)  # every held-out figure the demo reports
    for variant in ("prefix_only", "prefix_only/shuffled", "full", "evidence_only", "retrieval_copy"):
        assert 0 <= metrics[f"report/{variant}/diagnosis"] <= 1
    reports = [json.loads(line) for line in (evaluated / "reports.jsonl").read_text().splitlines()]
    assert len(reports) == 4 and all(r["notice"] == RESEARCH_NOTICE for r in reports)
    cohort = synthetic_cohort(10, seed=42, cells_per_subject=6, missing_rate=0.1)  # the folder ``evaluated`` scored
    label_of = dict(zip(cohort.subject_ids, cohort.labels, strict=True))
    named_right = [r["label"] == label_of[r["subject_id"]] for r in reports]  # the written reports' impressions
    assert metrics["report/label_accuracy"] == pytest.approx(sum(named_right) / len(named_right))


def test_evaluate_on_the_reference_subjects_leaves_them_out(demo_dir, evaluated, tmp_path) -> None:
    from neuroomics_bridge import BridgeBundle, DataError
    from neuroomics_bridge.inference import evaluate_folder

    reference = BridgeBundle.load(demo_dir / "bridge").references
    cohort = synthetic_cohort(12, seed=42, cells_per_subject=6)
    cohort.subject_ids[:2] = reference.subject_ids[:2]  # two subjects the bridge was trained on
    cohort.reports[:2] = reference.reports[:2]
    shutil.copytree(evaluated, tmp_path / "ev")  # an earlier evaluation, with reports, is replaced as a whole
    metrics = evaluate_folder(demo_dir / "bridge", cohort.to_files(tmp_path / "c"), tmp_path / "ev", reports=False)
    assert metrics["evaluate/subjects"] == 10 and metrics["evaluate/excluded_reference_subjects"] == 2
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == metrics
    assert not (tmp_path / "ev" / "reports.jsonl").exists()  # no report of the earlier run beside these metrics
    only_known = cohort.subset(cohort.subject_ids[:2]).to_files(tmp_path / "known")
    with pytest.raises(DataError, match=r"known: no subject left to score \(2 subjects, all in the reference set\)"):
        evaluate_folder(demo_dir / "bridge", only_known, tmp_path / "ev2", reports=False)
    assert not (tmp_path / "ev2").exists()


def open_in_chromium(page: Path) -> dict[str, object]:
    """Load ``page`` in headless Chromium (Debian's, driven by Playwright) and read what a person would see."""
    from playwright.sync_api import sync_playwright

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("NOB_REQUIRE_BROWSER"):
            pytest.fail("NOB_REQUIRE_BROWSER is set but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=flags)
        try:
            tab = browser.new_page()
            errors: list[str] = []
            tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(page.as_uri(), wait_until="load")
            return {
                "errors": errors,
                "images": tab.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])"),
                "notice_visible": tab.get_by_text(RESEARCH_NOTICE).first.is_visible(),
                "notice_above_reports": tab.evaluate(
                    "document.querySelector('.notice').getBoundingClientRect().top"
                    " < document.querySelector('article.report').getBoundingClientRect().top"
                ),
                "injected": tab.evaluate("[!!document.querySelector('#injected'), window.injected === true]"),
                "text": tab.inner_text("body"),
            }
        finally:
            browser.close()


@pytest.mark.parametrize("which", ["demo", "evaluate"])
def test_pages_render_in_a_real_browser(demo_dir, evaluated, which: str) -> None:
    seen = open_in_chromium((demo_dir if which == "demo" else evaluated) / "index.html")
    assert seen["errors"] == []
    assert len(seen["images"]) >= 3 and all(width > 0 for _, width in seen["images"]), seen["images"]
    assert seen["notice_visible"] and seen["notice_above_reports"]
    assert seen["injected"] == [False, False]  # report text is shown, never run
    if which == "evaluate":
        assert '<b id="injected">bold</b>' in seen["text"]  # the markup is visible as text


@pytest.mark.parametrize("problem", ["missing", "malformed", "unlabelled"])
def test_a_bad_data_folder_exits_2_with_one_line(demo_dir, tmp_path, problem: str) -> None:
    data = tmp_path / "data"
    if problem == "malformed":
        data.mkdir()
        (data / "reports.csv").write_text("id,text\ns1,hello\n")
    commands = [
        ["demo", "--quick", "--data", str(data), "--out", "o"],
        ["report", "--bridge", str(demo_dir / "bridge"), "--data", str(data), "--out", "r.jsonl"],
        ["evaluate", "--bridge", str(demo_dir / "bridge"), "--data", str(data), "--out", "ev"],
    ]
    if problem == "unlabelled":
        cohort = synthetic_cohort(6, seed=1, cells_per_subject=4)
        cohort.to_files(data)
        table = pd.read_csv(data / "reports.csv").drop(columns="label")
        table.to_csv(data / "reports.csv", index=False)
        commands = commands[2:]  # reports without labels are fine for demo and report, not for scoring
    for command in commands:
        result = nob(*command, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert str(data) in result.stderr
