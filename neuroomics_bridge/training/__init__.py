"""Lightning training: alignment stages, checkpoints as safetensors, trainer conventions."""

from neuroomics_bridge.training.alignment import AlignmentModule, AlignmentResult, CohortDataModule, fit_alignment
from neuroomics_bridge.training.checkpoint import SafetensorsCheckpointIO

__all__ = ["AlignmentModule", "AlignmentResult", "CohortDataModule", "SafetensorsCheckpointIO", "fit_alignment"]
