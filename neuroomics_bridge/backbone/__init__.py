"""The text backbone: a LLaMA-family LLM as encoder and decoder, and its card registry."""

from neuroomics_bridge.backbone.cards import ModelCard, get_card, list_cards, validate_cards
from neuroomics_bridge.backbone.text import TextBackbone

__all__ = ["TextBackbone", "ModelCard", "get_card", "list_cards", "validate_cards"]
