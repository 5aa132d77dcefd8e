"""neuroomics-bridge: a medical LLM as the semantic bridge between genes, brains and text.

Everything public is importable from here; heavy modules (torch models, scanpy, faiss) load on
first use, so ``import neuroomics_bridge`` stays fast.
"""

from __future__ import annotations

from neuroomics_bridge.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "datasets": "neuroomics_bridge.datasets",
    "evaluation": "neuroomics_bridge.evaluation",
    "TextBackbone": "neuroomics_bridge.backbone.text",
    "ModelCard": "neuroomics_bridge.backbone.cards",
    "get_card": "neuroomics_bridge.backbone.cards",
    "list_cards": "neuroomics_bridge.backbone.cards",
    "validate_cards": "neuroomics_bridge.backbone.cards",
    "BackboneConfig": "neuroomics_bridge.backbone.config",
    "YamlConfig": "neuroomics_bridge.yamlconfig",
    "NobError": "neuroomics_bridge.errors",
    "ConfigError": "neuroomics_bridge.errors",
    "ModelNotFoundError": "neuroomics_bridge.errors",
    "InvalidModelError": "neuroomics_bridge.errors",
    "CorruptFileError": "neuroomics_bridge.errors",
    "DataError": "neuroomics_bridge.errors",
    "MissingFileError": "neuroomics_bridge.errors",
    "GeneEncoder": "neuroomics_bridge.encoders.gene",
    "BrainEncoder": "neuroomics_bridge.encoders.brain",
    "PrecomputedEncoder": "neuroomics_bridge.encoders.precomputed",
    "Residualizer": "neuroomics_bridge.encoders.covariates",
    "residualize": "neuroomics_bridge.encoders.covariates",
    "Atlas": "neuroomics_bridge.encoders.atlases",
    "CohortEncoder": "neuroomics_bridge.encoders.cohort",
    "Cohort": "neuroomics_bridge.data.cohort",
    "CohortSplit": "neuroomics_bridge.data.cohort",
    "BridgeConfig": "neuroomics_bridge.adapters.config",
    "LoRAConfig": "neuroomics_bridge.adapters.config",
    "Bridge": "neuroomics_bridge.bridge.model",
    "BridgeBundle": "neuroomics_bridge.bridge.bundle",
    "EmbeddingIndex": "neuroomics_bridge.retrieval",
    "ReferenceSet": "neuroomics_bridge.retrieval",
    "Report": "neuroomics_bridge.reports.report",
    "reports_to_frame": "neuroomics_bridge.reports.frame",
    "prompt_ensemble": "neuroomics_bridge.reports.prompts",
    "RESEARCH_NOTICE": "neuroomics_bridge.notice",
    "fit_alignment": "neuroomics_bridge.training.alignment",
    "AlignmentModule": "neuroomics_bridge.training.alignment",
    "CohortDataModule": "neuroomics_bridge.training.alignment",
    "SafetensorsCheckpointIO": "neuroomics_bridge.training.checkpoint",
}
__all__ = sorted([*_EXPORTS, "__version__"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
