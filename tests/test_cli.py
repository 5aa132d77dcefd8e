"""The `nob` command line: exit codes, one-line errors, cards and `nob align`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

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
    assert main(["cards", "--dir", str(tmp_path)]) == 1  # --dir validates that folder
    assert "BAD broken.yaml" in capsys.readouterr().out
    assert main(["cards", "--dir", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder of model cards" in capsys.readouterr().err
    (tmp_path / "broken.yaml").unlink()
    assert main(["cards", "--dir", str(tmp_path)]) == 2
    assert f"{tmp_path}: no model cards (*.yaml) in it" in capsys.readouterr().err


def test_library_error_exits_2_with_one_line_and_no_traceback() -> None:
    result = run_nob("demo", "--backbone", "no-such-backbone")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown backbone 'no-such-backbone'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command", ["demo --quick --out o", "report --bridge b --out r.jsonl", "evaluate --bridge b --out e"]
)
def test_a_missing_data_folder_fails_before_torch_is_imported(command: str, tmp_path: Path) -> None:
    # a fresh process: does the error come before the seconds spent importing torch and the models?
    args = [*command.split(), "--data", str(tmp_path / "missing")]
    probe = f"import sys; from neuroomics_bridge.cli import main; print(main({args!r}), 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.stdout.splitlines()[-1].split() == ["2", "False"], result.stderr[-2000:]  # demo logs steps before
    assert f"{tmp_path / 'missing'}: no such cohort folder" in result.stderr


@pytest.mark.parametrize(("action", "flag"), [("build", "--out"), ("search", "--index")])
def test_index_without_its_folder_exits_2_naming_the_flag(action: str, flag: str, capsys, tmp_path: Path) -> None:
    assert main(["index", action, "--vectors", str(tmp_path / "v.parquet"), "--modality", "gene"]) == 2
    assert f"nob index {action} needs {flag}" in capsys.readouterr().err


def test_reports_of_no_batch_no_tokens_or_an_unknown_format_are_refused_before_any_work(tmp_path: Path) -> None:
    from neuroomics_bridge import DataError
    from neuroomics_bridge.inference import write_reports

    # the folders do not exist: a check that came after reading them would raise another error
    with pytest.raises(DataError, match="batch_size: expected at least 1 subject per batch, got 0"):
        write_reports(tmp_path / "bridge", tmp_path / "data", tmp_path / "r.jsonl", batch_size=0)
    with pytest.raises(DataError, match="max_new_tokens: expected at least 1 token to generate, got 0"):
        write_reports(tmp_path / "bridge", tmp_path / "data", tmp_path / "r.jsonl", max_new_tokens=0)
    assert not (tmp_path / "r.jsonl").exists()
    with pytest.raises(DataError, match=r"r\.pdf: expected an output file ending in \.jsonl, \.md, \.html"):
        write_reports(tmp_path / "bridge", tmp_path / "data", tmp_path / "r.pdf")


def test_bad_evaluation_options_and_inputs_are_refused_before_any_work(capsys, tmp_path: Path) -> None:
    from neuroomics_bridge import DataError
    from neuroomics_bridge.data import Cohort
    from neuroomics_bridge.demo import run_demo
    from neuroomics_bridge.evaluation.harness import run_benchmarks
    from neuroomics_bridge.inference import evaluate_folder

    unlabelled = Cohort(["a", "b"], reports=["x", "y"]).to_files(tmp_path / "unlabelled")
    with pytest.raises(DataError, match=r"unlabelled: no labels; expected a 'label' column"):
        run_demo(tmp_path / "demo", data_dir=unlabelled, log=lambda line: None)
    for limit in (0, -1):
        with pytest.raises(DataError, match=rf"limit: expected None or at least 1 subject, got {limit}"):
            evaluate_folder(tmp_path / "bridge", unlabelled, tmp_path / "out", limit=limit)
    with pytest.raises(DataError, match="max_new_tokens: expected at least 1 token to generate, got 0"):
        evaluate_folder(tmp_path / "bridge", unlabelled, tmp_path / "out", max_new_tokens=0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match=r"shots: expected 0 .* got -1"):
        run_benchmarks(None, ["pubmedqa"], tmp_path, shots=-1)
    (tmp_path / "run.json").write_text(json.dumps({"results": [], "metadata": {}}))
    (tmp_path / "image.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    for name in ("run.json", "image.json"):
        assert main(["eval", "--compare", str(tmp_path / name), str(tmp_path / name)]) == 2
        assert f"{name}: not a results file written by nob eval" in capsys.readouterr().err
    assert main(["eval", "--compare", "a.json", "b.json", "--out", str(tmp_path / "cmp.png")]) == 2
    assert "cmp.png: name the Markdown table (e.g. compare.md)" in capsys.readouterr().err


def test_index_build_names_a_missing_table_and_a_modality_it_lacks(capsys, tmp_path: Path) -> None:
    import pandas as pd

    command = ["index", "build", "--modality", "gene", "--out", str(tmp_path / "index")]
    assert main([*command, "--vectors", str(tmp_path / "v.parquet")]) == 2
    assert "v.parquet: missing; expected a vectors table written by nob encode" in capsys.readouterr().err
    pd.DataFrame({"subject_id": ["a", "b"], "brain_0": [0.1, 0.2], "brain_1": [0.3, 0.4]}).to_parquet(
        tmp_path / "v.parquet"
    )
    assert main([*command, "--vectors", str(tmp_path / "v.parquet")]) == 2
    assert "v.parquet: no columns for modality 'gene'; modalities found: ['brain']" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_index_reads_only_its_modalitys_columns_and_names_a_bad_table(capsys, tmp_path: Path) -> None:
    import pandas as pd

    from neuroomics_bridge.retrieval import EmbeddingIndex

    table = pd.DataFrame({"subject_id": ["a", "b", "c"], "brain_0": [0.1, 0.2, 0.5], "brain_1": [0.3, 0.4, 0.1]})
    table["brain_fc_0"] = [np.nan, 0.5, 0.6]  # another modality whose name begins with "brain_"
    table.to_parquet(tmp_path / "v.parquet")
    assert main(["index", "build", "--vectors", str(tmp_path / "v.parquet"), "--modality", "brain",
                 "--out", str(tmp_path / "index")]) == 0  # fmt: skip
    assert EmbeddingIndex.load(tmp_path / "index").dim == 2
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "v.parquet").read_bytes()[:300])
    table.drop(columns="subject_id").to_parquet(tmp_path / "no_ids.parquet")
    for name, message in (("cut", "not a readable table"), ("no_ids", "expected a 'subject_id' column")):
        command = ["index", "build", "--vectors", str(tmp_path / f"{name}.parquet"), "--modality", "brain"]
        assert main([*command, "--out", str(tmp_path / name)]) == 2
        assert f"{name}.parquet: {message}" in capsys.readouterr().err


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(capsys, tmp_path: Path) -> None:
    from neuroomics_bridge import DataError
    from neuroomics_bridge.inference import evaluate_folder, write_reports

    (tmp_path / "taken.jsonl").mkdir()
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own")
    # the bridge and data folders do not exist: a check after reading them would raise another error
    with pytest.raises(DataError, match=r"taken\.jsonl: a folder; expected a file to write"):
        write_reports(tmp_path / "bridge", tmp_path / "data", tmp_path / "taken.jsonl")
    with pytest.raises(DataError, match=r"a_file: a file, so .*r\.jsonl cannot be written beneath it"):
        write_reports(tmp_path / "bridge", tmp_path / "data", tmp_path / "a_file" / "r.jsonl")
    with pytest.raises(DataError, match=r"mine: expected a new or empty folder or a saved evaluation, found a folder"):
        evaluate_folder(tmp_path / "bridge", tmp_path / "data", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "the user's own"
    # nob eval: --out is checked before the backbone (which does not exist either) is loaded
    eval_args = ["eval", "--backbone", "no-such-backbone", "--data", str(tmp_path), "--tasks", "pubmedqa"]
    assert main([*eval_args, "--out", str(tmp_path / "results.md")]) == 2
    assert "results.md: the results file must end in .json" in capsys.readouterr().err
    assert main([*eval_args, "--out", str(tmp_path / "results.json"), "--limit", "0"]) == 2
    assert "limit: expected None or at least 1 item per task, got 0" in capsys.readouterr().err


def test_the_file_systems_errors_exit_2_with_one_line_and_a_closed_pipe_quietly(monkeypatch, capsys) -> None:
    import neuroomics_bridge.cli as cli

    def refused(args):
        raise PermissionError(13, "Permission denied", "/data/out.jsonl")

    monkeypatch.setattr(cli, "_cmd_cards", refused)
    assert cli.main(["cards"]) == 2
    assert capsys.readouterr().err == "nob cards: error: [Errno 13] Permission denied: '/data/out.jsonl'\n"
    # `nob cards | head -0`: the reader closes its end before nob writes
    process = subprocess.Popen([sys.executable, "-m", "neuroomics_bridge.cli", "cards"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    process.stdout.close()
    assert process.wait(timeout=600) == 1 and process.stderr.read() == ""  # no traceback, no "Exception ignored"


def test_demo_passes_its_options_to_run_demo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from neuroomics_bridge import demo

    calls: list[dict[str, object]] = []

    def record(out_dir: str, **options: object) -> demo.DemoResult:
        calls.append({"out_dir": out_dir, **options})
        report = SimpleNamespace(subject_id="sub-1", sections={"Impression": "control"})
        metrics = {"zero_shot/gene/accuracy": 1.0}
        return demo.DemoResult(out_dir=tmp_path, metrics=metrics, reports=[report], page=tmp_path / "index.html")

    monkeypatch.setattr(demo, "run_demo", record)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert main(["demo", "--compile-training", "--out", str(tmp_path)]) == 0
    assert [(c["settings"], c["compile_training"]) for c in calls] == [(demo.QUICK, False), (demo.FULL, True)]
    assert {c["out_dir"] for c in calls} == {str(tmp_path)}


def align(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neuroomics_bridge.cli", "align", "fit", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )


@pytest.mark.slow
def test_align_fit_runs_both_stages_from_the_shipped_configs(tmp_path, tiny_model_dir) -> None:
    configs = Path(__file__).parents[1] / "configs"
    common = [
        "--data.synthetic_subjects",
        "60",
        "--model.backbone.name",
        str(tiny_model_dir),
        "--trainer.max_epochs",
        "2",
    ]
    first = align("--config", str(configs / "align_contrastive.yaml"), *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "zero_shot/gene/accuracy" in first.stdout and "saved to nob-runs/bridge" in first.stdout
    assert (tmp_path / "nob-runs" / "align-contrastive" / "checkpoints" / "last.ckpt").is_file()
    second = align(
        "--config", str(configs / "align_prefix.yaml"), *common, "--trainer.limit_train_batches", "2",
        "--trainer.precision", "32-true", cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "prefix/perplexity_gap" in second.stdout
    config = (tmp_path / "nob-runs" / "bridge" / "config.json").read_text()
    assert "prefix/perplexity_matched" in config and "zero_shot/gene/accuracy" in config


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_loss(tmp_path, tiny_model_dir) -> None:
    """open_clip's loss gathers features across ranks: 2 x 8 subjects on gloo == 16 in one process."""
    import pandas as pd

    configs = Path(__file__).parents[1] / "configs"
    common = [
        "--config", str(configs / "align_contrastive.yaml"), "--data.synthetic_subjects", "80",
        "--model.backbone.name", str(tiny_model_dir), "--model.bridge.dropout", "0", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu",
    ]  # fmt: skip
    losses = {}
    for devices, batch, strategy in ((2, 8, "ddp"), (1, 16, "auto")):
        folder = tmp_path / f"run{devices}"
        folder.mkdir()
        run = align(
            *common,
            "--trainer.devices",
            str(devices),
            "--trainer.strategy",
            strategy,
            "--data.batch_size",
            str(batch),
            cwd=folder,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        metrics = pd.read_csv(folder / "nob-runs" / "align-contrastive" / "logs" / "version_0" / "metrics.csv")
        losses[devices] = metrics.dropna(subset=["train/loss"])["train/loss"].to_numpy()
    assert len(losses[2]) == len(losses[1]) == 2  # the second step comes after one optimiser update
    np.testing.assert_allclose(losses[2], losses[1], rtol=1e-5)


def lightning_cli(command: str, config: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    configs = Path(__file__).parents[1] / "configs"
    return subprocess.run(
        [sys.executable, "-m", "neuroomics_bridge.cli", command, "fit", "--config", str(configs / config), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )


def test_pretrain_and_instruct_run_from_the_shipped_configs_on_the_sample_data(tmp_path, tiny_model_dir) -> None:
    samples = Path(__file__).parents[1] / "examples" / "data"
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "data").symlink_to(samples)  # the configs' relative paths
    pretrain = lightning_cli(
        "pretrain", "pretrain.yaml", "--data.backbone.name", str(tiny_model_dir), "--trainer.max_steps", "3",
        "--trainer.val_check_interval", "3", "--trainer.accumulate_grad_batches", "1", "--data.block_size", "64",
        "--trainer.precision", "32-true", cwd=tmp_path,
    )  # fmt: skip
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    assert "saved to nob-runs/pretrained" in pretrain.stdout and "general:" in pretrain.stdout
    card = (tmp_path / "nob-runs" / "pretrained" / "README.md").read_text()
    assert "token_shares" in card and "phi_replaced" in card and "clinical" in card
    perplexity = yaml.safe_load(card.split("---")[1])["heldout_perplexity"]
    assert set(perplexity["before"]) == set(perplexity["after"]) >= {"clinical"}  # measured before training too
    instruct = lightning_cli(
        "instruct", "instruct.yaml", "--data.backbone.name", str(tmp_path / "nob-runs" / "pretrained"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--data.max_length", "128", "--trainer.precision", "32-true", cwd=tmp_path,
    )  # fmt: skip
    assert instruct.returncode == 0, instruct.stderr[-3000:]
    assert (tmp_path / "nob-runs" / "instruct-adapter" / "adapter_model.safetensors").is_file()


def test_shipped_sample_data_is_what_the_generator_writes(tmp_path) -> None:
    from neuroomics_bridge.data.corpus import read_documents
    from neuroomics_bridge.data.samples import write_samples

    fresh, shipped = write_samples(tmp_path / "samples"), Path(__file__).parents[1] / "examples" / "data"
    for source in ("corpora/biomedical.jsonl", "corpora/clinical"):
        assert list(read_documents(fresh / source)) == list(read_documents(shipped / source)), source
    general = list(read_documents(shipped / "corpora/general.parquet"))  # CPython's own docs: they vary by version
    assert len(general) > 50 and all(len(text) > 200 for text in general)
    for name in ("train.jsonl", "val.jsonl"):
        assert (fresh / "instructions" / name).read_text() == (shipped / "instructions" / name).read_text()
