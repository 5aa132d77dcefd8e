"""Integration tests on the bundled SmolLM2-135M-Instruct (no network, no download)."""

from __future__ import annotations

import pytest
import torch

from neuroomics_bridge import TextBackbone
from neuroomics_bridge.backbone import gguf

pytestmark = pytest.mark.slow


def test_similar_clinical_sentences_embed_closer_than_unrelated_ones(default_backbone: TextBackbone) -> None:
    parkinson = "Resting tremor, bradykinesia and rigidity suggest Parkinson's disease."
    parkinson_paraphrase = "The patient has a resting tremor, slowness of movement and stiffness: parkinsonism."
    unrelated = "The quarterly sales report was sent to the finance department."
    vectors = default_backbone.encode([parkinson, parkinson_paraphrase, unrelated], normalize=True)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.05
    assert similarity[1, 0] > similarity[1, 2] + 0.05


def test_greedy_generation_is_deterministic(default_backbone: TextBackbone) -> None:
    prompt = default_backbone.chat("Name one symptom of Parkinson's disease.")
    first = default_backbone.generate([prompt], max_new_tokens=16)
    assert first == default_backbone.generate([prompt], max_new_tokens=16)
    assert first[0] and "<|im_" not in first[0]


def test_prefix_changes_output_and_empty_prefix_does_not(default_backbone: TextBackbone) -> None:
    prompts = [default_backbone.chat("Describe the patient in one sentence.")]
    plain = default_backbone.generate(prompts, max_new_tokens=12)
    empty = torch.zeros(1, 0, default_backbone.hidden_size)
    assert default_backbone.generate(prompts, prefix_embeds=empty, max_new_tokens=12) == plain
    # Soft tokens copied from the embeddings of a real phrase: a strong, in-distribution signal.
    phrase_ids = torch.tensor(default_backbone.tokenize(["Patient with severe Huntington's chorea"])[0])
    prefix = default_backbone.model.get_input_embeddings()(phrase_ids).unsqueeze(0).float()
    assert default_backbone.generate(prompts, prefix_embeds=prefix, max_new_tokens=12) != plain


def test_prompt_lookup_keeps_greedy_output(default_backbone: TextBackbone, monkeypatch) -> None:
    note = "MRI: bilateral hippocampal atrophy, no infarcts, mild periventricular white matter change."
    prompt = default_backbone.chat(f"Repeat this report exactly: {note}")
    calls = []
    real_generate = default_backbone._generate

    def spy(**kwargs):
        calls.append(kwargs.get("prompt_lookup_num_tokens"))
        return real_generate(**kwargs)

    monkeypatch.setattr(default_backbone, "_generate", spy)
    looked_up = default_backbone.generate(prompt, max_new_tokens=24, prompt_lookup=8)
    assert looked_up == default_backbone.generate(prompt, max_new_tokens=24)
    assert calls == [8, None]  # the first call decoded with prompt lookup, the second without


def test_gguf_is_converted_once_and_reloads_identical_logits(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    converted = []
    real_load = gguf._load_gguf

    def recording_load(source):
        model, tokenizer = real_load(source)
        converted.append(model)
        return model, tokenizer

    monkeypatch.setattr(gguf, "_load_gguf", recording_load)
    # the kernel forced, not timed: a timed choice of "packed" swaps in prepacked weights, whose
    # other summation order moves logits by up to 6e-4 (seen in CI); this test is about the conversion
    options = {"dtype": "float32", "kernel": "onednn"}
    first = TextBackbone.from_pretrained("smollm2-135m-instruct", **options)
    assert len(converted) == 1
    assert next(iter((tmp_path / "neuroomics-bridge" / "gguf").iterdir())).name == first.card.weights.sha256
    second = TextBackbone.from_pretrained("smollm2-135m-instruct", **options)
    assert len(converted) == 1, "the second load must come from the safetensors cache"

    ids = torch.tensor([second.tokenize(["Axial FLAIR shows a hyperintense lesion."])[0]])
    with torch.no_grad():
        from_gguf = converted[0](ids).logits
        from_cache = second.model(ids).logits
        from_first = first.model(ids).logits
    assert torch.equal(from_cache, from_gguf)
    assert torch.equal(from_first, from_gguf)


def test_every_single_row_kernel_gives_the_same_greedy_tokens(default_backbone: TextBackbone, monkeypatch) -> None:
    from neuroomics_bridge.backbone import hardware, text
    from neuroomics_bridge.backbone.packed import PackedLinear

    prompts = ["Describe the main symptoms of Parkinson's disease.", "What does hippocampal atrophy suggest?"]
    monkeypatch.setattr(text, "single_row_kernel", lambda model: pytest.fail("a kernel given is not timed"))
    fresh = TextBackbone.from_pretrained("smollm2-135m-instruct", kernel="onednn")
    assert not getattr(fresh.model, "_nob_single_row_aten", False)
    assert not any(isinstance(m, PackedLinear) for m in fresh.model.modules())
    with_onednn = [fresh.generate(p, max_new_tokens=24) for p in prompts]
    packed = TextBackbone.from_pretrained("smollm2-135m-instruct", kernel="packed")
    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    assert [packed.generate(p, max_new_tokens=24) for p in prompts] == with_onednn
    hardware.route_single_row_matmuls_to_aten(fresh.model)  # as kernel="aten" does (a third load spared)
    assert [fresh.generate(p, max_new_tokens=24) for p in prompts] == with_onednn
