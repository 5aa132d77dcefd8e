"""Evaluation: metrics, bridge evaluation, and the medical benchmark harness.

``metrics`` holds the metric functions (no model needed); ``bridge_metrics`` evaluates a trained
bridge on a labelled cohort (zero-shot, retrieval, report likelihood); ``factuality`` scores
generated reports fact by fact; ``loaders``, ``tasks``, ``scoring`` and ``harness`` score any
backbone, with or without a LoRA adapter, on PubMedQA, MedQA, MedMCQA, MedNLI, BioNLI, BC5CDR,
NCBI-disease, DDI, HoC and summarisation pairs (``nob eval``). Names load lazily: comparing two
saved benchmark runs imports no torch.
"""

from neuroomics_bridge.lazy import lazy_exports

_METRICS = "neuroomics_bridge.evaluation.metrics"
_EXPORTS = {
    "BenchmarkRun": "neuroomics_bridge.evaluation.harness",
    "compare_runs": "neuroomics_bridge.evaluation.harness",
    "run_benchmarks": "neuroomics_bridge.evaluation.harness",
    "locate_benchmarks": "neuroomics_bridge.evaluation.harness",
    "results_path": "neuroomics_bridge.evaluation.harness",
    "Example": "neuroomics_bridge.evaluation.loaders",
    "TaskResult": "neuroomics_bridge.evaluation.scoring",
    "evaluate_task": "neuroomics_bridge.evaluation.scoring",
    "TASKS": "neuroomics_bridge.evaluation.tasks",
    "BenchmarkTask": "neuroomics_bridge.evaluation.tasks",
    "get_task": "neuroomics_bridge.evaluation.tasks",
    "evaluate_bridge": "neuroomics_bridge.evaluation.bridge_metrics",
    "report_perplexity": "neuroomics_bridge.evaluation.bridge_metrics",
    "evaluate_reports": "neuroomics_bridge.evaluation.bridge_metrics",
    "report_label_metrics": "neuroomics_bridge.evaluation.bridge_metrics",
    "ReportEvaluation": "neuroomics_bridge.evaluation.bridge_metrics",
    "fact_accuracy": "neuroomics_bridge.evaluation.factuality",
    "copy_rate": "neuroomics_bridge.evaluation.factuality",
    "retrieval_copy": "neuroomics_bridge.evaluation.factuality",
    "synthetic_facts": "neuroomics_bridge.evaluation.factuality",
    "cohort_facts": "neuroomics_bridge.evaluation.factuality",
    **{
        name: _METRICS
        for name in (
            "accuracy_stderr",
            "classification_metrics",
            "entity_f1",
            "macro_f1",
            "multilabel_f1",
            "normalize_answer",
            "recall_at_k",
            "report_label_accuracy",
            "rouge_l",
            "set_f1",
            "zero_shot_accuracy",
        )
    },
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
