"""Device/dtype choice and the single-row kernel switch."""

from __future__ import annotations

import pytest
import torch

from neuroomics_bridge import ConfigError, TextBackbone
from neuroomics_bridge.backbone import hardware


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_dtype_follows_native_bf16_support(monkeypatch, native: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.default_dtype(torch.device("cpu")) == expected


def test_dtype_names_resolve_and_unknown_ones_fail() -> None:
    assert hardware.resolve_dtype("bfloat16") is torch.bfloat16
    assert hardware.resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ConfigError, match="got 'int3'"):
        hardware.resolve_dtype("int3")


def _flag_seen_inside_forward(backbone: TextBackbone, ids: torch.Tensor) -> bool:
    seen = []
    handle = backbone.model.get_decoder().register_forward_pre_hook(
        lambda module, args: seen.append(torch.backends.mkldnn.enabled)
    )
    try:
        with torch.no_grad():
            backbone.model(input_ids=ids)
    finally:
        handle.remove()
    return seen[0]


def test_single_row_forwards_skip_onednn_and_restore_it(tiny_backbone: TextBackbone) -> None:
    assert torch.backends.mkldnn.enabled
    assert _flag_seen_inside_forward(tiny_backbone, torch.tensor([[5]])) is False
    assert torch.backends.mkldnn.enabled
    assert _flag_seen_inside_forward(tiny_backbone, torch.tensor([[5, 6, 7]])) is True
    assert _flag_seen_inside_forward(tiny_backbone, torch.tensor([[5], [6], [7]])) is True


def test_onednn_is_restored_when_a_forward_fails(tiny_backbone: TextBackbone) -> None:
    out_of_vocabulary = torch.tensor([[10**6]])
    with pytest.raises(IndexError):
        tiny_backbone.model(input_ids=out_of_vocabulary)
    assert torch.backends.mkldnn.enabled


def test_wrapping_one_model_twice_keeps_the_switch_balanced(tiny_backbone: TextBackbone) -> None:
    again = TextBackbone(tiny_backbone.model, tiny_backbone.tokenizer, name="again")
    assert _flag_seen_inside_forward(again, torch.tensor([[5]])) is False
    assert torch.backends.mkldnn.enabled
