"""The ``nob`` command line.

Library errors (:class:`NobError`) end the command with exit code 2 and one line on stderr;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from neuroomics_bridge.errors import NobError
from neuroomics_bridge.reports import RESEARCH_NOTICE

DEMO_QUESTION = (
    "A 67-year-old man has a resting tremor of the right hand, slowed movements and cogwheel "
    "rigidity. What is the most likely diagnosis? Answer in two sentences."
)
DEMO_SENTENCES = (
    "Resting tremor, bradykinesia and rigidity suggest Parkinson's disease.",
    "Dopaminergic neuron loss in the substantia nigra causes parkinsonism.",
    "Hippocampal atrophy and memory decline are typical of Alzheimer's disease.",
    "The quarterly sales report was sent to the finance department.",
)


def _cmd_demo(args: argparse.Namespace) -> int:
    from neuroomics_bridge.backbone import TextBackbone

    backbone = TextBackbone.from_pretrained(args.backbone)
    print(f"backbone: {backbone}")
    print(f"\nQ: {DEMO_QUESTION}")
    answer = backbone.generate([backbone.chat(DEMO_QUESTION)], max_new_tokens=args.max_new_tokens)[0]
    print(f"A: {answer}\n   [{RESEARCH_NOTICE}]")
    vectors = backbone.encode(list(DEMO_SENTENCES), normalize=True)
    similarity = (vectors @ vectors.T).numpy()
    print("\ncosine similarity of sentence embeddings (mean-pooled hidden states):")
    labels = [f"S{i + 1}" for i in range(len(DEMO_SENTENCES))]
    print("      " + "  ".join(f"{label:>5}" for label in labels))
    for label, row in zip(labels, similarity, strict=True):
        print(f"{label:>5} " + "  ".join(f"{value:5.2f}" for value in row))
    for label, sentence in zip(labels, DEMO_SENTENCES, strict=True):
        print(f"  {label}: {sentence}")
    return 0


def _cmd_cards(args: argparse.Namespace) -> int:
    from neuroomics_bridge.backbone.cards import get_card, list_cards, validate_cards

    if args.validate:
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


def _cmd_align(args: argparse.Namespace) -> int:
    import warnings

    from neuroomics_bridge.training.recipes import AlignmentCLI

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # we pass them on purpose
        cli = AlignmentCLI(args.lightning_args)
    module = cli.model
    if cli.trainer.is_global_zero and module.metrics:
        print(f"test-fold metrics ({module.stage} stage):")
        for name, value in module.metrics.items():
            print(f"  {name}: {value:.3f}")
    if cli.trainer.is_global_zero and module.save_to:
        print(f"bridge saved to {module.save_to}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nob", description="neuroomics-bridge command line")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the pipeline end to end on the offline default backbone")
    demo.add_argument("--backbone", default="smollm2-135m-instruct", help="registry id, model directory or .gguf")
    demo.add_argument("--max-new-tokens", type=int, default=64)
    demo.set_defaults(run=_cmd_demo)

    align = commands.add_parser(
        "align",
        help="train the bridge's adapters (LightningCLI): nob align fit --config configs/align_contrastive.yaml",
        add_help=False,
    )
    align.add_argument("lightning_args", nargs=argparse.REMAINDER)
    align.set_defaults(run=_cmd_align)

    cards = commands.add_parser("cards", help="list, show or validate the backbone model cards")
    cards.add_argument("id", nargs="?", help="show this card in full")
    cards.add_argument("--validate", action="store_true", help="validate every card; exit 1 if any is invalid")
    cards.add_argument("--dir", default=None, help="validate the cards in this folder instead of the shipped ones")
    cards.set_defaults(run=_cmd_cards)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except NobError as err:
        print(f"nob {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
