"""Adapters: losses against open_clip and a hand-written loop, heads, prefix projector."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from neuroomics_bridge.adapters import BridgeAdapters, ContrastiveHead, PairLoss, PrefixProjector
from neuroomics_bridge.config import BridgeConfig


def unit(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_clip_pair_loss_equals_open_clip_when_nothing_is_absent_or_repeated() -> None:
    a, b = unit(12, seed=1), unit(12, seed=2)
    loss = PairLoss("clip", init_temperature=0.05)
    expected = ClipLoss()(a, b, logit_scale=torch.tensor(1 / 0.05))
    torch.testing.assert_close(loss(a, b, torch.ones(12, dtype=torch.bool)), expected)


def test_siglip_pair_loss_equals_open_clip_when_nothing_is_repeated() -> None:
    a, b = unit(12, seed=3), unit(12, seed=4)
    loss = PairLoss("siglip")
    expected = SigLipLoss()(a, b, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0))
    torch.testing.assert_close(loss(a, b, torch.ones(12, dtype=torch.bool)), expected)


def naive_clip(a, b, present, groups, scale) -> torch.Tensor:
    """Hand-written InfoNCE: absent rows dropped, other rows with the same text are no negatives."""
    rows = [i for i in range(len(a)) if present[i]]
    total = 0.0
    for direction in ("ab", "ba"):
        for i in rows:
            query = a[i] if direction == "ab" else b[i]
            candidates = [j for j in rows if j == i or groups[j] != groups[i]]
            scores = torch.stack([scale * query @ (b[j] if direction == "ab" else a[j]) for j in candidates])
            total += -(scores[candidates.index(i)] - torch.logsumexp(scores, 0))
    return total / (2 * len(rows))


def test_clip_loss_masks_absent_rows_and_repeated_texts_like_the_formula() -> None:
    a, b = unit(10, seed=5), unit(10, seed=6)
    present = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)
    groups = torch.tensor([0, 1, 2, 1, 3, 4, 5, 1, 6, 0])
    loss = PairLoss("clip", init_temperature=0.1)
    torch.testing.assert_close(
        loss(a, b, present, groups), naive_clip(a, b, present, groups, 10.0), rtol=1e-5, atol=1e-5
    )


def test_siglip_loss_labels_repeated_texts_as_positives() -> None:
    a, b = unit(6, seed=7), unit(6, seed=8)
    groups = torch.tensor([0, 0, 1, 2, 2, 2])
    loss = PairLoss("siglip")
    logits = 10.0 * a @ b.T - 10.0
    labels = torch.where(groups[:, None] == groups[None, :], 1.0, -1.0)
    expected = -F.logsigmoid(labels * logits).sum() / 6
    torch.testing.assert_close(loss(a, b, torch.ones(6, dtype=torch.bool), groups), expected)


def test_temperature_is_learnable_and_capped_at_100() -> None:
    loss = PairLoss("clip", init_temperature=0.07)
    assert loss.logit_scale.requires_grad
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1e4))
    assert float(loss.similarity_scale()) == pytest.approx(100.0)


def test_a_batch_with_fewer_than_two_present_rows_gives_zero_loss_with_a_graph() -> None:
    a = unit(4, seed=9).requires_grad_()
    value = PairLoss()(a, unit(4), torch.tensor([True, False, False, False]))
    value.backward()
    assert float(value.detach()) == 0.0 and a.grad is not None


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_contrastive_heads_give_unit_vectors(kind: str) -> None:
    head = ContrastiveHead(20, 8, kind=kind, hidden=32)
    out = head(torch.randn(5, 20) * 100)
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5))


def test_prefix_projector_gives_k_tokens_per_modality_and_absent_tokens() -> None:
    projector = PrefixProjector({"gene": 6, "brain": 4}, hidden_size=12, tokens=3, token_norm=2.5)
    inputs = {"gene": torch.randn(2, 6), "brain": torch.randn(2, 4)}
    present = {"gene": torch.tensor([True, False]), "brain": torch.tensor([True, True])}
    tokens = projector(inputs, present)
    assert tokens.shape == (2, 6, 12) and projector.n_tokens == 6
    torch.testing.assert_close(tokens.norm(dim=-1), torch.full((2, 6), 2.5))  # every token at the token norm
    absent = torch.nn.functional.normalize(projector.absent["gene"], dim=-1) * 2.5
    torch.testing.assert_close(tokens[1, :3], absent)  # gene absent for subject 1: its learned tokens
    other = projector({"gene": torch.full((2, 6), float("nan")), "brain": inputs["brain"]}, present)
    torch.testing.assert_close(other[1], tokens[1])  # absent rows' values are ignored, NaN included


def test_adapters_align_every_modality_with_text_and_with_each_other() -> None:
    adapters = BridgeAdapters({"gene": 6, "brain": 4}, text_dim=10, hidden_size=12, config=BridgeConfig(embed_dim=8))
    assert adapters.pairs == [("gene", "text"), ("brain", "text"), ("gene", "brain")]
    batch = {"gene": torch.randn(5, 6), "brain": torch.randn(5, 4)}
    present = {"gene": torch.ones(5, dtype=torch.bool), "brain": torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)}
    output = adapters.contrastive(batch, present, torch.randn(5, 10))
    assert set(output.parts) == {"gene-text", "brain-text", "gene-brain"}
    torch.testing.assert_close(output.loss, torch.stack(list(output.parts.values())).mean())
    text_only = BridgeAdapters({"gene": 6, "brain": 4}, 10, 12, BridgeConfig(embed_dim=8, cross_modal=False))
    assert text_only.pairs == [("gene", "text"), ("brain", "text")]


def test_a_modality_named_text_is_refused() -> None:
    from neuroomics_bridge import ConfigError

    with pytest.raises(ConfigError, match="none named 'text'"):
        BridgeAdapters({"text": 4}, 10, 12, BridgeConfig())
