"""Where the configs used to live: aliases kept for existing imports.

Each config now lives beside the component it configures: :class:`BackboneConfig` in
``backbone/config.py``, :class:`BridgeConfig` and :class:`LoRAConfig` in ``adapters/config.py``,
the YAML-dataclass base :class:`YamlConfig` in ``yamlconfig.py``.
"""

from neuroomics_bridge.adapters.config import BridgeConfig, HeadKind, LoRAConfig, LossKind
from neuroomics_bridge.backbone.config import BackboneConfig, DType, Pooling
from neuroomics_bridge.yamlconfig import YamlConfig, check_choice

__all__ = [
    "BackboneConfig",
    "BridgeConfig",
    "DType",
    "HeadKind",
    "LoRAConfig",
    "LossKind",
    "Pooling",
    "YamlConfig",
    "check_choice",
]
