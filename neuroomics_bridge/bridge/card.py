"""The Hugging Face-style model card (``README.md`` with a YAML header) of a saved bridge."""

from __future__ import annotations

from typing import Any

import yaml

from neuroomics_bridge.notice import RESEARCH_NOTICE

__all__ = ["model_card"]


def model_card(config: dict[str, Any]) -> str:
    """The card's Markdown for a saved bridge's ``config.json`` content (notice first)."""
    card = config["card"]
    header = {
        "base_model": config["backbone"]["name"],
        "base_model_sha256": config["backbone"]["weights_sha256"],
        "library_name": "neuroomics-bridge",
        "tags": ["neuroomics-bridge", "multimodal", "contrastive", "soft-prompt", "research-use-only"],
        "modalities": config["modality_dims"],
        "datasets": card.get("datasets", []),
        "metrics": card.get("metrics", {}),
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# neuroomics-bridge adapters for `{config['backbone']['name']}`",
        "",
        f"> **{RESEARCH_NOTICE}**",
        "",
        "Projection heads that align "
        + ", ".join(f"`{m}` ({d}-d)" for m, d in config["modality_dims"].items())
        + " vectors with the backbone's text embeddings (CLIP-style), and a prefix projector that maps them to "
        f"{config['bridge_config']['prefix_tokens']} soft tokens per modality in its input space (LLaVA-style). "
        "Adapter weights only; the backbone is not included.",
        "",
        "## Training data",
        "",
        card.get("data_summary", "Not recorded."),
        "",
        "## Metrics",
        "",
    ]
    metrics = card.get("metrics", {})
    lines += [f"- {name}: {value}" for name, value in metrics.items()] or ["Not recorded."]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from neuroomics_bridge import Bridge",
        "bridge = Bridge.from_pretrained('this/folder')  # refuses a backbone with other weights",
        "```",
        "",
    ]
    return "\n".join(lines)
