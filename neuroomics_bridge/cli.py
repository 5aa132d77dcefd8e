"""The ``nob`` command line.

Library errors (:class:`NobError`) and the file system's (``OSError``: no space, no permission)
end the command with exit code 2 and one line on stderr; a closed pipe (``nob index search | head``)
ends it quietly; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from neuroomics_bridge.backbone.config import DEFAULT_BACKBONE
from neuroomics_bridge.errors import NobError
from neuroomics_bridge.notice import RESEARCH_NOTICE
from neuroomics_bridge.reports.report import REPORT_BATCH_SIZE, REPORT_MAX_NEW_TOKENS


def _cmd_demo(args: argparse.Namespace) -> int:
    from neuroomics_bridge.demo import FULL, QUICK, format_metrics, run_demo

    result = run_demo(
        args.out,
        data_dir=args.data,
        settings=QUICK if args.quick else FULL,
        backbone=args.backbone,
        compile_training=args.compile_training,
    )
    print(f"\nheld-out metrics ({RESEARCH_NOTICE}):")
    print(format_metrics(result.metrics))
    example = result.reports[0]
    print(f"\nexample report for {example.subject_id}:")
    for heading, text in example.sections.items():
        print(f"  {heading}: {text}")
    print(f"\npage: {result.page}\nbridge: {result.out_dir / 'bridge'} (reuse it with: nob report --bridge ...)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from neuroomics_bridge.inference import write_reports

    count = write_reports(
        args.bridge, args.data, args.out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    print(f"{count} reports written to {args.out} [{RESEARCH_NOTICE}]")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from neuroomics_bridge.demo import format_metrics
    from neuroomics_bridge.inference import evaluate_folder

    facts = [c for c in (args.facts or "").split(",") if c]
    metrics = evaluate_folder(
        args.bridge, args.data, args.out, fact_columns=facts, reports=not args.no_reports, limit=args.limit,
        seed=args.seed, max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    print(f"held-out metrics ({RESEARCH_NOTICE}):")
    print(format_metrics(metrics))
    print(f"\npage: {args.out}/index.html; metrics: {args.out}/metrics.json")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from neuroomics_bridge.inference import encode_folder

    table = encode_folder(args.encoders, args.data, args.out)
    print(f"{len(table)} subjects encoded to {args.out} ({table.shape[1] - 1} columns)")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from neuroomics_bridge.errors import ConfigError
    from neuroomics_bridge.inference import build_index, search_index

    flag, folder, verb = ("--out", args.out, "write") if args.action == "build" else ("--index", args.index, "search")
    if not folder:
        raise ConfigError(f"nob index {args.action} needs {flag} (the index folder to {verb})")
    if args.action == "build":
        index = build_index(args.vectors, args.modality, args.out, bridge_dir=args.bridge, factory=args.factory)
        print(f"indexed {len(index)} subjects ({args.modality}, {args.factory}) in {args.out}")
        return 0
    for line in search_index(args.index, args.vectors, args.modality, k=args.k, bridge_dir=args.bridge):
        print(line)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from neuroomics_bridge.errors import ConfigError
    from neuroomics_bridge.evaluation.harness import RUN_FILES, BenchmarkRun, compare_runs, plot_runs
    from neuroomics_bridge.io import atomic_write_text

    if args.compare:
        if args.out and Path(args.out).suffix == ".png":  # the table would be overwritten by its own plot
            raise ConfigError(f"--out {args.out}: name the Markdown table (e.g. compare.md); its plot goes beside it")
        if args.out:  # the table and its plot must not replace a compared run's files
            written = {Path(args.out).resolve(), Path(args.out).with_suffix(".png").resolve()}
            saved = {Path(run).with_suffix(suffix).resolve() for run in args.compare for suffix in RUN_FILES}
            if written & saved:
                raise ConfigError(
                    f"--out {args.out}: would replace {sorted(map(str, written & saved))[0]}, a file of a compared "
                    "run; name another table (e.g. compare.md)"
                )
        runs = [BenchmarkRun.load(path) for path in args.compare]
        table = compare_runs(*runs)
        if args.out:
            atomic_write_text(args.out, table)
            plot_runs(runs, Path(args.out).with_suffix(".png"))
        print(table)
        return 0
    missing = [
        flag for flag, value in (("--backbone", args.backbone), ("--data", args.data), ("--out", args.out)) if not value
    ]
    if missing:
        raise ConfigError(f"nob eval needs {', '.join(missing)} (or --compare RUN_A.json RUN_B.json)")
    from neuroomics_bridge.backbone.text import TextBackbone
    from neuroomics_bridge.evaluation.harness import locate_benchmarks, results_path, run_benchmarks
    from neuroomics_bridge.evaluation.tasks import TASKS

    tasks = list(TASKS) if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    results_path(args.out)  # a wrong --out, task, limit or data folder fails now, not after the whole run
    locate_benchmarks(tasks, args.data, limit=args.limit, shots=args.shots)
    backbone = TextBackbone.from_pretrained(args.backbone, local_dir=args.local_dir, dtype=args.dtype)
    if args.lora:
        from neuroomics_bridge.training.instruct import load_lora

        load_lora(backbone, args.lora)  # peft injects the adapter into backbone.model in place
    run = run_benchmarks(
        backbone, tasks, args.data, mode=args.mode, shots=args.shots, seed=args.seed, limit=args.limit,
        prompt_format=args.prompt_format, batch_size=args.batch_size, adapter=args.lora,
    )  # fmt: skip
    path = run.save(args.out)
    print(run.to_markdown())
    print(f"results: {path} (+ .md, .png, .predictions.jsonl)")
    return 0


def _cmd_cards(args: argparse.Namespace) -> int:
    from neuroomics_bridge.backbone.cards import get_card, list_cards, validate_cards

    if args.validate or args.dir:
        results = validate_cards(args.dir)
        for file, problem in results.items():
            print(f"{'ok ' if problem is None else 'BAD'} {file}" + ("" if problem is None else f": {problem}"))
        return 0 if all(problem is None for problem in results.values()) else 1
    if args.id:
        import yaml

        print(yaml.safe_dump(get_card(args.id).to_dict(), sort_keys=False, allow_unicode=True))
        return 0
    rows = [(c.id, c.arch.parameters, str(c.context_length), c.weights.source, c.license.weights) for c in list_cards()]
    header = ("id", "params", "context", "weights", "weights licence")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_lightning(args: argparse.Namespace) -> int:
    import warnings

    from neuroomics_bridge.training import recipes

    cli_class = {"align": recipes.AlignmentCLI, "pretrain": recipes.PretrainCLI, "instruct": recipes.InstructCLI}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # we pass them on purpose
        cli = cli_class[args.command](args.lightning_args)
    module = cli.model
    metrics = getattr(module, "metrics", None) or getattr(module, "perplexity", None)
    if cli.trainer.is_global_zero and metrics:
        print(f"held-out metrics ({args.command}):")
        for name, value in metrics.items():
            print(f"  {name}: {value:.3f}")
    saved = getattr(module, "save_to", None) or getattr(module, "output_dir", None)
    if cli.trainer.is_global_zero and saved:
        print(f"saved to {saved}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``nob`` parser: one subcommand per task, each setting ``run`` to its handler.

    ``align``, ``pretrain`` and ``instruct`` pass every remaining argument to their LightningCLI.
    """
    parser = argparse.ArgumentParser(prog="nob", description="neuroomics-bridge command line")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole pipeline end to end on the offline default backbone")
    demo.add_argument("--out", default="nob-demo", help="output folder (index.html, metrics, reports, bridge)")
    demo.add_argument("--data", default=None, help="a cohort folder (Cohort.to_files layout); default: synthetic")
    demo.add_argument("--quick", action="store_true", help="a smaller, ~2 minute run")
    demo.add_argument("--backbone", default=DEFAULT_BACKBONE, help="registry id, model directory or .gguf")
    demo.add_argument(
        "--compile-training",
        action="store_true",
        help="torch.compile the prefix stage's steps (a first run compiles for minutes, later ones reuse the cache)",
    )
    demo.set_defaults(run=_cmd_demo)

    report = commands.add_parser("report", help="write reports for a cohort folder with a trained bridge")
    report.add_argument("--bridge", required=True, help="a bridge folder (from nob demo or save_pretrained + encoders)")
    report.add_argument("--data", required=True, help="a cohort folder (Cohort.to_files layout)")
    report.add_argument("--out", required=True, help="output file: .jsonl, .md or .html")
    report.add_argument(
        "--batch-size", type=int, default=REPORT_BATCH_SIZE, help="subjects encoded and reported at a time"
    )
    report.add_argument(
        "--max-new-tokens", type=int, default=REPORT_MAX_NEW_TOKENS, help="longest findings text per report, in tokens"
    )
    report.set_defaults(run=_cmd_report)

    scored = commands.add_parser(
        "evaluate", help="score a trained bridge on a labelled cohort folder: zero-shot, retrieval, report facts"
    )
    scored.add_argument("--bridge", required=True, help="a bridge folder with its encoders (what nob demo writes)")
    scored.add_argument("--data", required=True, help="a labelled cohort folder (Cohort.to_files layout)")
    scored.add_argument("--out", required=True, help="output folder: metrics.json, index.html, plots/, reports")
    scored.add_argument("--facts", default=None, help="comma-separated categorical columns a report must state")
    scored.add_argument("--no-reports", action="store_true", help="score the aligned space only (no generation)")
    scored.add_argument("--limit", type=int, default=None, help="score the first N subjects only")
    scored.add_argument("--seed", type=int, default=0, help="seed of the shuffled-subject controls")
    scored.add_argument(
        "--max-new-tokens",
        type=int,
        default=REPORT_MAX_NEW_TOKENS,
        help="longest findings text per report, in tokens (fewer: faster, rougher; unused with --no-reports)",
    )
    scored.set_defaults(run=_cmd_evaluate)

    encode = commands.add_parser("encode", help="write subject vectors of a cohort folder with saved encoders")
    encode.add_argument("--encoders", required=True, help="a saved CohortEncoder folder (e.g. <bridge>/encoders)")
    encode.add_argument("--data", required=True, help="a cohort folder")
    encode.add_argument("--out", required=True, help="output .parquet (subject_id + one column per dimension)")
    encode.set_defaults(run=_cmd_encode)

    index = commands.add_parser("index", help="build or search a faiss index of subject vectors")
    index.add_argument("action", choices=["build", "search"])
    index.add_argument("--vectors", required=True, help=".parquet written by nob encode")
    index.add_argument("--modality", required=True, help="which modality's columns to use")
    index.add_argument("--bridge", default=None, help="embed into the bridge's aligned space first (cross-modal)")
    index.add_argument("--out", help="index folder to write (build)")
    index.add_argument("--index", help="index folder to search (search)")
    index.add_argument("--factory", default="Flat", help="faiss index factory string (build)")
    index.add_argument("--k", type=int, default=5, help="neighbours per query (search)")
    index.set_defaults(run=_cmd_index)

    for name, purpose, config in (
        ("align", "train the bridge's adapters", "align_contrastive.yaml"),
        ("pretrain", "continual pretraining on a corpus mixture", "pretrain.yaml"),
        ("instruct", "LoRA instruction tuning", "instruct.yaml"),
    ):
        command = commands.add_parser(
            name, help=f"{purpose} (LightningCLI): nob {name} fit --config configs/{config}", add_help=False
        )
        command.add_argument("lightning_args", nargs=argparse.REMAINDER)
        command.set_defaults(run=_cmd_lightning)

    evaluate = commands.add_parser("eval", help="score a backbone (+ LoRA) on medical benchmarks, or compare two runs")
    evaluate.add_argument("--backbone", help="registry id, model directory or .gguf")
    evaluate.add_argument("--local-dir", default=None, help="weights folder of a gated registry backbone")
    evaluate.add_argument(
        "--dtype", choices=["bfloat16", "float16", "float32"], default=None,
        help="weights dtype (default: on a CPU bf16 where it runs natively, else float32; on a GPU the card's); "
        "float32 scores are exact",
    )  # fmt: skip
    evaluate.add_argument("--lora", default=None, help="a LoRA adapter folder (nob instruct fit) to apply first")
    evaluate.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    evaluate.add_argument("--data", help="folder holding <task>.<ext> or <task>/test.<ext> per task")
    evaluate.add_argument(
        "--out", help="results .json (.md, .png, .predictions.jsonl go beside it); with --compare: .md (+ .png)"
    )
    evaluate.add_argument(
        "--mode", choices=["auto", "loglik", "generate"], default="auto",
        help="auto: log-likelihood for multiple choice, generation for the rest",
    )  # fmt: skip
    evaluate.add_argument("--shots", type=int, default=0, help="exemplars per prompt (seeded)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the exemplar draw")
    evaluate.add_argument("--limit", type=int, default=None, help="first N items per task only")
    evaluate.add_argument(
        "--prompt-format", choices=["chat", "plain"], default="chat",
        help="chat: the card's template, else the tokenizer's, else Question/Answer; plain: Question/Answer completion",
    )  # fmt: skip
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="two results .json files to compare")
    evaluate.set_defaults(run=_cmd_eval)

    cards = commands.add_parser("cards", help="list, show or validate the backbone model cards")
    cards.add_argument("id", nargs="?", help="show this card in full")
    cards.add_argument("--validate", action="store_true", help="validate every card; exit 1 if any is invalid")
    cards.add_argument(
        "--dir", default=None, help="validate the cards in this folder instead of the shipped ones (implies --validate)"
    )
    cards.set_defaults(run=_cmd_cards)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``nob`` with ``argv`` (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: the command's own (0 on success; ``cards --validate`` gives 1 for an
        invalid card), 2 after a :class:`NobError` or an ``OSError``, printed as one line on
        stderr, or 1 when the reader of its output went away.
    """
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader gone away shows here, not as an error when Python exits
        return code
    except NobError as err:
        print(f"nob {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system's refusal (a full disk, permissions): the user's to mend, not a bug
        if isinstance(err, BrokenPipeError):  # `nob index search ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
            return 1
        print(f"nob {args.command}: error: {err}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``nob`` console script: its process keeps freed memory for reuse, then :func:`main` runs.

    See :func:`~neuroomics_bridge.allocator.keep_freed_memory` (fewer page faults in training
    and encoding); :func:`main` itself, called from Python, leaves the caller's process alone.
    """
    from neuroomics_bridge.allocator import keep_freed_memory

    keep_freed_memory()
    sys.exit(main())


if __name__ == "__main__":
    run()
