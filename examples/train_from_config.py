"""Training the bridge's adapters with Lightning from the shipped YAML configs.

Runs the contrastive stage (``configs/align_contrastive.yaml``) and then the prefix stage
(``configs/align_prefix.yaml``, which starts from the first stage's saved bridge) through
``AlignmentCLI`` (a LightningCLI), exactly as ``nob align fit --config ...`` would, with a few
overrides on top of the YAML; then plots both stages' training curves from Lightning's CSV logs.

    python examples/train_from_config.py --subjects 400 --contrastive-epochs 30 --prefix-epochs 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from neuroomics_bridge.allocator import keep_freed_memory
from neuroomics_bridge.training.recipes import AlignmentCLI

matplotlib.use("Agg")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def fit(stage: str, out: Path, overrides: list[str]) -> dict[str, float]:
    """One stage through LightningCLI; returns its test-fold metrics."""
    cli = AlignmentCLI(
        [
            "fit",
            "--config",
            str(CONFIGS / f"align_{stage}.yaml"),
            "--trainer.default_root_dir",
            str(out / stage),
            "--model.save_to",
            str(out / "bridge"),
            *overrides,
        ]
    )
    return cli.model.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("nob-train-example"))
    parser.add_argument("--subjects", type=int, default=80, help="synthetic subjects to train on")
    parser.add_argument("--contrastive-epochs", type=int, default=8)
    parser.add_argument("--prefix-epochs", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory()  # a training process: reuse freed activations instead of faulting pages in again

    data = ["--data.synthetic_subjects", str(args.subjects)]
    metrics = fit("contrastive", args.out, [*data, "--trainer.max_epochs", str(args.contrastive_epochs)])
    metrics |= fit(
        "prefix",
        args.out,
        [*data, "--trainer.max_epochs", str(args.prefix_epochs), "--model.init_from", str(args.out / "bridge")],
    )

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, stage in zip(axes, ("contrastive", "prefix"), strict=True):
        log = pd.read_csv(next((args.out / stage).rglob("metrics.csv")))
        for column in ("train/loss", "val/loss"):
            points = log[["step", column]].dropna() if column in log else None
            if points is not None and len(points):
                axis.plot(points["step"], points[column], marker="." if column == "val/loss" else "", label=column)
        axis.set(title=f"{stage} stage", xlabel="step", ylabel="loss")
        axis.legend()
    figure.tight_layout()
    figure.savefig(args.out / "training_curves.png", dpi=120)

    for name, value in metrics.items():
        print(f"{name}: {value:.3f}")
    print(f"bridge saved to {args.out / 'bridge'}; curves in {args.out / 'training_curves.png'}")


if __name__ == "__main__":
    main()
