"""Evaluation: bridge metrics (retrieval, zero-shot, reports) and the medical benchmark harness.

``metrics`` holds the metric functions; ``loaders``, ``tasks``, ``scoring`` and ``harness``
score any backbone, with or without a LoRA adapter, on PubMedQA, MedQA, MedMCQA, MedNLI,
BioNLI, BC5CDR, NCBI-disease, DDI, HoC and summarisation pairs (``nob eval``).
"""

from neuroomics_bridge.evaluation.harness import BenchmarkRun, compare_runs, run_benchmarks
from neuroomics_bridge.evaluation.loaders import Example
from neuroomics_bridge.evaluation.metrics import (
    accuracy_stderr,
    classification_metrics,
    entity_f1,
    evaluate_bridge,
    macro_f1,
    multilabel_f1,
    normalize_answer,
    recall_at_k,
    report_label_accuracy,
    report_perplexity,
    rouge_l,
    set_f1,
    zero_shot_accuracy,
)
from neuroomics_bridge.evaluation.scoring import TaskResult, evaluate_task
from neuroomics_bridge.evaluation.tasks import TASKS, BenchmarkTask, get_task

__all__ = [
    "TASKS",
    "BenchmarkRun",
    "BenchmarkTask",
    "Example",
    "TaskResult",
    "accuracy_stderr",
    "classification_metrics",
    "compare_runs",
    "entity_f1",
    "evaluate_bridge",
    "evaluate_task",
    "get_task",
    "macro_f1",
    "multilabel_f1",
    "normalize_answer",
    "recall_at_k",
    "report_label_accuracy",
    "report_perplexity",
    "rouge_l",
    "run_benchmarks",
    "set_f1",
    "zero_shot_accuracy",
]
