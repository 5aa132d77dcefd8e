"""The `nob` command line: exit codes, one-line errors, and the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from neuroomics_bridge.cli import main


def run_nob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuroomics_bridge.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_cards_lists_every_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cards"]) == 0
    out = capsys.readouterr().out
    for card_id in ("me-llama-13b-chat", "meditron-70b", "pmc-llama-13b", "llama-2-7b", "smollm2-135m-instruct"):
        assert card_id in out


def test_cards_show_prints_one_card(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cards", "me-llama-13b"]) == 0
    assert "PhysioNet-Credentialed-Health-Data-License-1.5.0" in capsys.readouterr().out


def test_cards_validate_passes_on_shipped_cards(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cards", "--validate"]) == 0
    assert "BAD" not in capsys.readouterr().out


def test_cards_validate_fails_and_names_a_bad_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.yaml").write_text("id: broken\nname: Broken\n")
    assert main(["cards", "--validate", "--dir", str(tmp_path)]) == 1
    assert "BAD broken.yaml" in capsys.readouterr().out


def test_library_error_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_nob("demo", "--backbone", "no-such-backbone")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown backbone 'no-such-backbone'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_answers_and_prints_a_similarity_table() -> None:
    result = run_nob("demo", "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "Research use only — not for clinical decision-making." in result.stdout
    assert "cosine similarity" in result.stdout and "S4" in result.stdout
    assert "Loading weights" not in result.stderr  # no progress bars when not a terminal
