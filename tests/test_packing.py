"""Packed training forwards: a right-padded batch's hidden states and gradients, computed on
its real tokens only (``backbone/packing.py``), on a tiny random LLaMA."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from neuroomics_bridge import TextBackbone
from neuroomics_bridge.backbone import packing
from neuroomics_bridge.backbone.attention import attention_implementation
from neuroomics_bridge.bridge import Bridge

from .conftest import CLINICAL_SENTENCES

LENGTHS = (7, 3, 9, 5)  # right-padded rows of unequal length


@pytest.fixture
def packed_calls(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The query shape of every packed attention call (so a test knows packing really ran)."""
    calls: list[torch.Size] = []
    plain = packing.packed_attention

    def counting(module: torch.nn.Module, query: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(query.shape)
        return plain(module, query, *args, **kwargs)

    monkeypatch.setattr(packing, "packed_attention", counting)
    return calls


@pytest.fixture
def attended_lengths(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The query length of every call packed attention makes to the inner (SDPA or eager) kernel."""
    lengths: list[int] = []
    plain = packing._inner_attention

    def recording(module: torch.nn.Module, attention: str) -> Callable[..., object]:
        inner = plain(module, attention)

        def run(module: torch.nn.Module, query: torch.Tensor, *args: object, **kwargs: object) -> object:
            lengths.append(query.shape[2])
            return inner(module, query, *args, **kwargs)

        return run

    monkeypatch.setattr(packing, "_inner_attention", recording)
    return lengths


@pytest.fixture
def padded_too(tiny_backbone: TextBackbone) -> Iterator[Callable[..., torch.Tensor]]:
    """``run(**inputs)``: the backbone's last hidden states computed padded (packing off)."""

    def run(**inputs: torch.Tensor) -> torch.Tensor:
        tiny_backbone.pack_rows = False
        try:
            return tiny_backbone.last_hidden_state(**inputs)
        finally:
            tiny_backbone.pack_rows = True

    yield run
    tiny_backbone.pack_rows = True


def right_padding_mask(lengths: tuple[int, ...]) -> torch.Tensor:
    return (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_batch_gives_the_padded_batchs_hidden_states_and_gradients(
    tiny_backbone: TextBackbone,
    packed_calls: list[torch.Size],
    attended_lengths: list[int],
    padded_too: Callable[..., torch.Tensor],
    attention: str,
) -> None:
    torch.manual_seed(0)
    mask = right_padding_mask(LENGTHS)
    embeds = torch.randn(len(LENGTHS), max(LENGTHS), tiny_backbone.hidden_size, requires_grad=True)
    real = mask.bool()[..., None]
    with attention_implementation(tiny_backbone.model, attention):
        padded = padded_too(inputs_embeds=embeds, attention_mask=mask)
        assert not packed_calls
        packed = tiny_backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask)
        assert tiny_backbone.model.config._attn_implementation == attention  # switched back after the forward
    n_layers = tiny_backbone.model.config.num_hidden_layers
    assert packed_calls == [torch.Size([1, packed_calls[0][1], sum(LENGTHS), packed_calls[0][3]])] * n_layers
    assert attended_lengths == list(LENGTHS) * n_layers  # each row attended at its own length, no padding
    torch.testing.assert_close(packed, padded * real, rtol=1e-5, atol=1e-6)
    assert not packed[~mask.bool()].any()  # zero at padding
    # the losses of training score real positions only: their gradients are the padded batch's
    (padded_grad,) = torch.autograd.grad((padded * real).square().sum(), embeds)
    (packed_grad,) = torch.autograd.grad(packed.square().sum(), embeds)
    torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-5, atol=1e-6)
    assert not packed_grad[~mask.bool()].any()  # padding's embeddings feed nothing real


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_a_mask_of_floats_or_booleans_packs_as_one_of_integers(
    tiny_backbone: TextBackbone,
    packed_calls: list[torch.Size],
    padded_too: Callable[..., torch.Tensor],
    dtype: torch.dtype,
) -> None:
    """transformers takes 0/1 masks of any dtype; packing counts the real tokens alike."""
    torch.manual_seed(0)
    mask = right_padding_mask(LENGTHS).to(dtype)
    embeds = torch.randn(len(LENGTHS), max(LENGTHS), tiny_backbone.hidden_size)
    with torch.no_grad():
        packed = tiny_backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask)
        padded = padded_too(inputs_embeds=embeds, attention_mask=mask)
    assert packed_calls
    torch.testing.assert_close(packed, padded * mask.bool()[..., None], rtol=1e-5, atol=1e-6)


def test_token_ids_pack_as_embeddings_do(
    tiny_backbone: TextBackbone, packed_calls: list[torch.Size], padded_too: Callable[..., torch.Tensor]
) -> None:
    rows = tiny_backbone.tokenize(CLINICAL_SENTENCES[:4])
    lengths = tuple(len(ids) for ids in rows)
    assert len(set(lengths)) > 1
    ids = torch.tensor([row + [0] * (max(lengths) - len(row)) for row in rows])
    mask = right_padding_mask(lengths)
    with torch.no_grad():
        packed = tiny_backbone.last_hidden_state(input_ids=ids, attention_mask=mask)
        padded = padded_too(input_ids=ids, attention_mask=mask)
    assert packed_calls
    torch.testing.assert_close(packed, padded * mask[..., None], rtol=1e-5, atol=1e-6)


def test_report_loss_is_the_same_packed_or_padded(make_bridge: Callable[..., Bridge], packed_calls: list) -> None:
    bridge = make_bridge()
    torch.manual_seed(0)
    features = {m: torch.randn(3, d) for m, d in bridge.modality_dims.items()}
    present = {m: torch.ones(3, dtype=torch.bool) for m in features}
    reports = [CLINICAL_SENTENCES[0], CLINICAL_SENTENCES[1] * 2, CLINICAL_SENTENCES[2]]

    def loss_and_gradients(pack_rows: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        bridge.backbone.pack_rows = pack_rows
        try:
            nll, tokens = bridge.report_nll(features, present, reports)
        finally:
            bridge.backbone.pack_rows = True
        loss = nll.sum() / tokens.sum()
        return loss, list(torch.autograd.grad(loss, list(bridge.adapters.parameters()), allow_unused=True))

    padded_loss, padded_grads = loss_and_gradients(False)
    assert not packed_calls
    packed_loss, packed_grads = loss_and_gradients(True)
    assert packed_calls
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    for packed, padded in zip(packed_grads, padded_grads, strict=True):
        if padded is None:
            assert packed is None
        else:
            torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["left padding", "no padding", "an empty row", "position ids given", "sliding window", "not sdpa or eager"],
)
def test_batches_packing_would_not_compute_exactly_run_padded(tiny_backbone: TextBackbone, case: str) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    model = tiny_backbone.model
    mask = right_padding_mask(LENGTHS)
    embeds = torch.zeros(len(LENGTHS), max(LENGTHS), model.config.hidden_size)
    assert packing.pack_inputs(model, {"inputs_embeds": embeds, "attention_mask": mask}) is not None  # the control
    inputs: dict[str, object] = {}
    if case == "left padding":
        mask = mask.flip(1)
    elif case == "no padding":
        mask = torch.ones_like(mask)
    elif case == "an empty row":
        mask[1] = 0
    elif case == "position ids given":
        inputs["position_ids"] = torch.arange(max(LENGTHS))[None]
    elif case == "sliding window":
        config = MistralConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, sliding_window=4,
        )  # fmt: skip
        model = MistralForCausalLM(config)
    embeds = torch.zeros(len(LENGTHS), max(LENGTHS), model.config.hidden_size)
    implementation = "flex_attention" if case == "not sdpa or eager" else model.config._attn_implementation
    before = model.config._attn_implementation
    model.config._attn_implementation = implementation  # what pack_inputs reads; no forward runs here
    try:
        assert packing.pack_inputs(model, {"inputs_embeds": embeds, "attention_mask": mask, **inputs}) is None
    finally:
        model.config._attn_implementation = before
