"""Adapters between modality vectors and the backbone: contrastive heads, losses, prefix projector."""

from neuroomics_bridge.adapters.heads import ContrastiveHead
from neuroomics_bridge.adapters.losses import PairLoss
from neuroomics_bridge.adapters.module import BridgeAdapters
from neuroomics_bridge.adapters.prefix import PrefixProjector

__all__ = ["BridgeAdapters", "ContrastiveHead", "PairLoss", "PrefixProjector"]
