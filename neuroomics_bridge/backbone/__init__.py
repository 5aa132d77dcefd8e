"""The text backbone: a LLaMA-family LLM as encoder and decoder, its config and its card registry.

Names load lazily, so reading a model card (``get_card``, ``list_cards``) imports no torch.
"""

from neuroomics_bridge.lazy import lazy_exports

_EXPORTS = {
    "TextBackbone": "neuroomics_bridge.backbone.text",
    "BackboneConfig": "neuroomics_bridge.backbone.config",
    "ModelCard": "neuroomics_bridge.backbone.cards",
    "get_card": "neuroomics_bridge.backbone.cards",
    "list_cards": "neuroomics_bridge.backbone.cards",
    "validate_cards": "neuroomics_bridge.backbone.cards",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
