"""The bridge: a backbone plus the adapters that connect gene and brain vectors to it.

``model.py`` holds :class:`Bridge` (embed, zero-shot, soft prefix, save/load of the adapters),
``generation.py`` its grounded report generation, ``card.py`` its model card, ``bundle.py`` the
saved bridge bundle (adapters + fitted encoders + reference set) that ``nob demo`` writes and
``nob report`` reads.
"""

from neuroomics_bridge.lazy import lazy_exports

_EXPORTS = {
    "Bridge": "neuroomics_bridge.bridge.model",
    "BRIDGE_FORMAT": "neuroomics_bridge.bridge.model",
    "embed_vectors": "neuroomics_bridge.bridge.model",
    "load_adapters": "neuroomics_bridge.bridge.model",
    "BridgeBundle": "neuroomics_bridge.bridge.bundle",
    "BUNDLE_FORMAT": "neuroomics_bridge.bridge.bundle",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
