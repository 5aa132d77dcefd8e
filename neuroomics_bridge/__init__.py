"""neuroomics-bridge: a medical LLM as the semantic bridge between genes, brains and text.

Everything public is importable from here; heavy modules (torch models, scanpy, faiss) load on
first use, so ``import neuroomics_bridge`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "TextBackbone": "neuroomics_bridge.backbone",
    "ModelCard": "neuroomics_bridge.backbone",
    "get_card": "neuroomics_bridge.backbone",
    "list_cards": "neuroomics_bridge.backbone",
    "validate_cards": "neuroomics_bridge.backbone",
    "BackboneConfig": "neuroomics_bridge.config",
    "YamlConfig": "neuroomics_bridge.config",
    "NobError": "neuroomics_bridge.errors",
    "ConfigError": "neuroomics_bridge.errors",
    "ModelNotFoundError": "neuroomics_bridge.errors",
    "InvalidModelError": "neuroomics_bridge.errors",
    "CorruptFileError": "neuroomics_bridge.errors",
    "DataError": "neuroomics_bridge.errors",
    "MissingFileError": "neuroomics_bridge.errors",
    "GeneEncoder": "neuroomics_bridge.encoders",
    "BrainEncoder": "neuroomics_bridge.encoders",
    "PrecomputedEncoder": "neuroomics_bridge.encoders",
    "Residualizer": "neuroomics_bridge.encoders",
    "residualize": "neuroomics_bridge.encoders",
    "Atlas": "neuroomics_bridge.encoders",
    "Cohort": "neuroomics_bridge.data",
    "CohortSplit": "neuroomics_bridge.data",
    "CohortEncoder": "neuroomics_bridge.data",
    "BridgeConfig": "neuroomics_bridge.config",
    "Bridge": "neuroomics_bridge.bridge",
    "EmbeddingIndex": "neuroomics_bridge.retrieval",
    "Report": "neuroomics_bridge.reports",
    "ReferenceSet": "neuroomics_bridge.reports",
    "RESEARCH_NOTICE": "neuroomics_bridge.reports",
    "fit_alignment": "neuroomics_bridge.training",
    "AlignmentModule": "neuroomics_bridge.training",
    "CohortDataModule": "neuroomics_bridge.training",
    "SafetensorsCheckpointIO": "neuroomics_bridge.training",
}
_SUBMODULES = {"datasets", "evaluation"}

__all__ = [
    "AlignmentModule",
    "Atlas",
    "BackboneConfig",
    "Bridge",
    "BridgeConfig",
    "BrainEncoder",
    "Cohort",
    "CohortDataModule",
    "CohortEncoder",
    "CohortSplit",
    "ConfigError",
    "CorruptFileError",
    "DataError",
    "EmbeddingIndex",
    "GeneEncoder",
    "InvalidModelError",
    "MissingFileError",
    "ModelCard",
    "ModelNotFoundError",
    "NobError",
    "PrecomputedEncoder",
    "RESEARCH_NOTICE",
    "ReferenceSet",
    "Report",
    "Residualizer",
    "SafetensorsCheckpointIO",
    "TextBackbone",
    "YamlConfig",
    "__version__",
    "datasets",
    "evaluation",
    "fit_alignment",
    "get_card",
    "list_cards",
    "residualize",
    "validate_cards",
]

if TYPE_CHECKING:
    from neuroomics_bridge import datasets, evaluation
    from neuroomics_bridge.backbone import ModelCard, TextBackbone, get_card, list_cards, validate_cards
    from neuroomics_bridge.bridge import Bridge
    from neuroomics_bridge.config import BackboneConfig, BridgeConfig, YamlConfig
    from neuroomics_bridge.data import Cohort, CohortEncoder, CohortSplit
    from neuroomics_bridge.encoders import (
        Atlas,
        BrainEncoder,
        GeneEncoder,
        PrecomputedEncoder,
        Residualizer,
        residualize,
    )
    from neuroomics_bridge.errors import (
        ConfigError,
        CorruptFileError,
        DataError,
        InvalidModelError,
        MissingFileError,
        ModelNotFoundError,
        NobError,
    )
    from neuroomics_bridge.reports import RESEARCH_NOTICE, ReferenceSet, Report
    from neuroomics_bridge.retrieval import EmbeddingIndex
    from neuroomics_bridge.training import AlignmentModule, CohortDataModule, SafetensorsCheckpointIO, fit_alignment


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"neuroomics_bridge.{name}")
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'neuroomics_bridge' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
