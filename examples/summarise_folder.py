"""Generating clinical summaries for a folder of subjects with a trained bridge.

Loads a bridge folder written by ``nob demo`` (the adapters, the fitted encoders and the reference
subjects reports cite), reads the cohort folder through the encoders, and writes one report per
subject: sections, zero-shot probabilities, similar reference subjects, and the research-use
notice. Without ``--bridge``, a small bridge is trained first (the demo pipeline on 60 synthetic
subjects, about three minutes on one core, in ``nob-small-bridge/``); without ``--data``, ten new
synthetic subjects, some missing a modality, written to a temporary folder removed at the end.

    python examples/summarise_folder.py --bridge nob-demo/bridge --data my_cohort/ --out reports.html
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from neuroomics_bridge import BridgeBundle, Cohort, Report, datasets
from neuroomics_bridge.demo import DemoSettings, run_demo
from neuroomics_bridge.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bridge", type=Path, help="a bridge folder written by nob demo")
    parser.add_argument("--data", type=Path, help="a cohort folder (Cohort.to_files layout)")
    parser.add_argument("--out", type=Path, default=Path("reports.html"))
    args = parser.parse_args()

    if args.bridge is None:
        small = DemoSettings(subjects=60, contrastive_epochs=10, prefix_epochs=1, prefix_batches=2, reported_subjects=2)
        args.bridge = run_demo("nob-small-bridge", settings=small, log=lambda _: None).out_dir / "bridge"
    with tempfile.TemporaryDirectory(prefix="nob-example-cohort-") as scratch:
        if args.data is None:  # a folder of its own: Cohort.to_files replaces the folder it is given
            synthetic = datasets.synthetic_cohort(10, seed=7, cells_per_subject=8, missing_rate=0.2)
            args.data = synthetic.to_files(Path(scratch) / "cohort")
        reports = summarise(args.bridge, data=args.data)
    for report in reports:
        top = next(iter(report.evidence.probabilities.items()), ("-", 0.0))
        print(f"{report.subject_id}: {report.impression}  [zero-shot: {top[0]} {top[1]:.2f}; data: "
              f"{', '.join(report.evidence.present)}]")  # fmt: skip
    page = "".join(report.to_html() for report in reports)
    atomic_write_text(args.out, f'<!doctype html><meta charset="utf-8"><title>reports</title>{page}')
    print(f"{len(reports)} reports ({reports[0].notice}) written to {args.out}")


def summarise(bridge: Path, *, data: Path) -> list[Report]:
    """One report per subject of the cohort folder ``data``, from the bridge folder ``bridge``."""
    bundle = BridgeBundle.load(bridge, need_encoders=True)  # adapters, fitted encoders, reference subjects
    cohort = bundle.encoders.transform(Cohort.from_files(data))
    classes = sorted({label for label in bundle.references.labels if label})
    return bundle.bridge.generate_report(
        cohort.features,
        subject_ids=cohort.subject_ids,
        covariates=cohort.covariates,  # age and sex are stated in the prompt, never guessed
        reference=bundle.references,
        classes=classes,
    )


if __name__ == "__main__":
    main()
