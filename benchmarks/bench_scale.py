"""``nob report`` at cohort scale: peak memory at 1,000 and 10,000 subjects.

The command streams: it encodes and reports ``--batch-size`` subjects at a time and appends to
the output file, so its peak memory should not grow with the cohort. Measured with GNU time's
maximum resident set size of the whole ``nob report`` process on cohort folders written by
``Cohort.to_files`` (genes.h5ad with 2 cells per subject, one 8 mm NIfTI per subject). The
language model is a 2-layer random LLaMA with the default backbone's tokenizer: what is measured
is the pipeline's memory, not the reports' content (with the 135M default, 10,000 reports take
hours on 2 cores). The ratio printed is peak RSS at 10k / peak RSS at 1k (goal: ~1).

Run: ``python benchmarks/bench_scale.py``. Prints one JSON line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import emit

SIZES = (1_000, 10_000)


def tiny_backbone_dir(root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from neuroomics_bridge import TextBackbone

    tokenizer = TextBackbone.from_pretrained("smollm2-135m-instruct").tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    return root / "tiny"


def bridge_dir(root: Path, model_dir: Path) -> Path:
    from neuroomics_bridge import Bridge, BridgeConfig, CohortEncoder, TextBackbone, datasets
    from neuroomics_bridge.encoders import BrainEncoder, GeneEncoder
    from neuroomics_bridge.retrieval import ReferenceSet

    cohort = datasets.synthetic_cohort(200, seed=0, cells_per_subject=2, brain_resolution_mm=8)
    encoders = CohortEncoder(
        {"gene": GeneEncoder(n_components=16), "brain": BrainEncoder("mni-gm-64-8mm", n_components=16)},
        residualize=["age", "sex", "site"],
    )
    encoded = encoders.fit_transform(cohort, cohort)
    bridge = Bridge(TextBackbone.from_pretrained(model_dir, dtype="float32"), {"gene": 16, "brain": 16}, BridgeConfig())
    folder = bridge.save_pretrained(root / "bridge")
    encoders.save(folder / "encoders")
    ReferenceSet.build(bridge, encoded).save(folder / "references")
    return folder


def peak_rss_mib(bridge: Path, data: Path, out: Path) -> tuple[float, float]:
    command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "neuroomics_bridge.cli", "report"]
    command += ["--bridge", str(bridge), "--data", str(data), "--out", str(out), "--batch-size", "64"]
    command += ["--max-new-tokens", "8"]  # memory is the point here, not prose
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(result.stderr.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    from neuroomics_bridge import datasets

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bridge = bridge_dir(root, tiny_backbone_dir(root))
        figures = {}
        for n in SIZES:
            data = datasets.synthetic_cohort(n, seed=1, cells_per_subject=2, brain_resolution_mm=8)
            folder = data.to_files(root / f"cohort-{n}")
            del data
            rss, seconds = peak_rss_mib(bridge, folder, root / f"reports-{n}.jsonl")
            lines = (root / f"reports-{n}.jsonl").read_text(encoding="utf-8").count("\n")
            assert lines == n, (lines, n)
            figures[n] = {"peak_rss_mib": round(rss), "seconds": round(seconds)}
        ratio = figures[SIZES[1]]["peak_rss_mib"] / figures[SIZES[0]]["peak_rss_mib"]
        emit("nob_report_peak_rss_10k_vs_1k", ratio, **{str(k): v for k, v in figures.items()})


if __name__ == "__main__":
    main()
