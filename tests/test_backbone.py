"""TextBackbone on a tiny random LLaMA: encoding, generation, prefixes, chat formats."""

from __future__ import annotations

import pytest
import torch

from neuroomics_bridge import DataError, TextBackbone, get_card
from neuroomics_bridge.backbone import text
from neuroomics_bridge.backbone.text import COMPLETION_TEMPLATE

from .conftest import CLINICAL_SENTENCES


def test_encode_returns_one_float32_vector_per_text(tiny_backbone: TextBackbone) -> None:
    vectors = tiny_backbone.encode(CLINICAL_SENTENCES)
    assert vectors.shape == (len(CLINICAL_SENTENCES), tiny_backbone.hidden_size)
    assert vectors.dtype == torch.float32
    assert torch.isfinite(vectors).all()


def test_encode_normalize_gives_unit_vectors(tiny_backbone: TextBackbone) -> None:
    norms = tiny_backbone.encode(CLINICAL_SENTENCES, normalize=True).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_batching_and_order_do_not_change_embeddings(tiny_backbone: TextBackbone, pooling: str) -> None:
    one_by_one = tiny_backbone.encode(CLINICAL_SENTENCES, pooling=pooling, batch_size=1)
    batched = tiny_backbone.encode(CLINICAL_SENTENCES, pooling=pooling, batch_size=5)
    reversed_order = tiny_backbone.encode(CLINICAL_SENTENCES[::-1], pooling=pooling, batch_size=3).flip(0)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reversed_order, one_by_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_pooling_matches_hand_computed_hidden_states(tiny_backbone: TextBackbone, pooling: str) -> None:
    text = CLINICAL_SENTENCES[1]
    ids = torch.tensor([tiny_backbone.tokenize([text])[0]])
    with torch.no_grad():
        hidden = tiny_backbone.model(ids, output_hidden_states=True).hidden_states[-1][0]
    expected = hidden.mean(0) if pooling == "mean" else hidden[-1]
    torch.testing.assert_close(tiny_backbone.encode(text, pooling=pooling)[0], expected, atol=1e-5, rtol=1e-5)


def test_empty_text_is_rejected_with_its_index(tiny_backbone: TextBackbone) -> None:
    with pytest.raises(DataError, match=r"texts\[1\] is empty"):
        tiny_backbone.encode(["tremor", "", "rigidity"])


def test_unknown_pooling_is_rejected(tiny_backbone: TextBackbone) -> None:
    with pytest.raises(DataError, match="pooling"):
        tiny_backbone.encode(["tremor"], pooling="max")


def test_overlong_text_is_truncated_with_a_warning(tiny_backbone: TextBackbone) -> None:
    long_text = " ".join(CLINICAL_SENTENCES * 10)
    with pytest.warns(UserWarning, match="exceed 32 tokens"):
        vector = tiny_backbone.encode(long_text, max_length=32, pooling="mean")
    kept = torch.tensor([tiny_backbone.tokenize([long_text])[0][:32]])  # cut from the right
    with torch.no_grad():
        expected = tiny_backbone.model(kept, output_hidden_states=True).hidden_states[-1][0].mean(0)
    torch.testing.assert_close(vector[0], expected, atol=1e-5, rtol=1e-5)


def test_greedy_generation_is_deterministic_and_returns_only_new_text(tiny_backbone: TextBackbone) -> None:
    prompt = CLINICAL_SENTENCES[0]
    first = tiny_backbone.generate(prompt, max_new_tokens=6)
    second = tiny_backbone.generate([prompt], max_new_tokens=6)
    assert first == second
    ids = torch.tensor([tiny_backbone.tokenize([prompt])[0]])
    reference = tiny_backbone.model.generate(ids, max_new_tokens=6, do_sample=False)
    expected = tiny_backbone.tokenizer.decode(reference[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert first == [expected]


def test_batched_generation_equals_one_prompt_at_a_time(tiny_backbone: TextBackbone) -> None:
    prompts = CLINICAL_SENTENCES[:5]
    batched = tiny_backbone.generate(prompts, max_new_tokens=5, batch_size=5)
    single = [tiny_backbone.generate(p, max_new_tokens=5)[0] for p in prompts]
    assert batched == single


def test_zero_width_prefix_equals_plain_generation(tiny_backbone: TextBackbone) -> None:
    prompts = CLINICAL_SENTENCES[:3]
    empty = torch.zeros(len(prompts), 0, tiny_backbone.hidden_size)
    assert tiny_backbone.generate(prompts, prefix_embeds=empty, max_new_tokens=5) == tiny_backbone.generate(
        prompts, max_new_tokens=5
    )


def test_prefix_tokens_change_the_next_token_distribution(tiny_backbone: TextBackbone) -> None:
    token_ids = tiny_backbone.tokenize(CLINICAL_SENTENCES[:2])
    torch.manual_seed(1)
    prefix = 3 * torch.randn(2, 4, tiny_backbone.hidden_size)
    with torch.no_grad():
        plain_embeds, plain_mask = tiny_backbone.prefixed_inputs(token_ids, None)
        prefixed_embeds, prefixed_mask = tiny_backbone.prefixed_inputs(token_ids, prefix)
        plain = tiny_backbone.model(inputs_embeds=plain_embeds, attention_mask=plain_mask).logits[:, -1]
        prefixed = tiny_backbone.model(inputs_embeds=prefixed_embeds, attention_mask=prefixed_mask).logits[:, -1]
    assert prefixed_embeds.shape[1] == plain_embeds.shape[1] + 4
    assert (prefixed - plain).abs().max() > 1e-3


def test_prefixed_inputs_place_prefix_right_before_the_prompt(tiny_backbone: TextBackbone) -> None:
    token_ids = [[5, 6, 7], [8]]
    prefix = torch.arange(2 * 2 * tiny_backbone.hidden_size, dtype=torch.float32).view(2, 2, -1)
    embeds, mask = tiny_backbone.prefixed_inputs(token_ids, prefix)
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    torch.testing.assert_close(embeds[1, 2:4], prefix[1])
    word_embeddings = tiny_backbone.model.get_input_embeddings().weight
    torch.testing.assert_close(embeds[1, 4], word_embeddings[8])
    right_embeds, right_mask = tiny_backbone.prefixed_inputs(token_ids, prefix, padding_side="right")
    assert right_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    torch.testing.assert_close(right_embeds[1, :2], prefix[1])


def test_prefix_of_wrong_width_is_rejected(tiny_backbone: TextBackbone) -> None:
    bad = torch.zeros(1, 4, tiny_backbone.hidden_size + 1)
    with pytest.raises(DataError, match=r"expected shape \(1, k, 32\)"):
        tiny_backbone.generate(["tremor"], prefix_embeds=bad, max_new_tokens=2)


def test_prompt_longer_than_context_is_cut_from_the_left(tiny_backbone: TextBackbone) -> None:
    long_prompt = " ".join(CLINICAL_SENTENCES * 10)  # several hundred tokens, context is 256
    with pytest.warns(UserWarning, match="cut from the left"):
        text = tiny_backbone.generate([long_prompt], max_new_tokens=8)
    # The result is greedy decoding of the prompt's last 256 - 8 tokens, exactly.
    ids = tiny_backbone.tokenize([long_prompt])[0]
    assert len(ids) > tiny_backbone.context_length
    kept = torch.tensor([ids[-(tiny_backbone.context_length - 8) :]])
    with torch.no_grad():
        out = tiny_backbone.model.generate(
            input_ids=kept,
            attention_mask=torch.ones_like(kept),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tiny_backbone.tokenizer.pad_token_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
    expected = tiny_backbone.tokenizer.decode(out[0, kept.shape[1] :], skip_special_tokens=True).strip()
    assert text == [expected]


def test_no_room_for_a_prompt_is_a_clear_error(tiny_backbone: TextBackbone) -> None:
    with pytest.raises(DataError, match="leave no room"):
        tiny_backbone.generate(["tremor"], max_new_tokens=256)
    for tokens in (0, -5):
        with pytest.raises(DataError, match=rf"max_new_tokens: expected at least 1 token to generate, got {tokens}"):
            tiny_backbone.generate(["tremor"], max_new_tokens=tokens)


def test_chat_uses_me_llama_prompt_format_from_its_card(tiny_backbone: TextBackbone) -> None:
    card = get_card("me-llama-13b-chat")
    backbone = TextBackbone(tiny_backbone.model, tiny_backbone.tokenizer, name=card.id, card=card)
    assert backbone.chat("Summarise the MRI report.") == "Human: \nSummarise the MRI report.\n\nAssistant: \n"


def test_chat_falls_back_to_completion_template_without_one(tiny_backbone: TextBackbone) -> None:
    assert tiny_backbone.tokenizer.chat_template is None
    assert tiny_backbone.chat_template == COMPLETION_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is ataxia?"}]
    assert tiny_backbone.chat(messages) == "Be brief.\n\nQuestion: What is ataxia?\nAnswer:"


def test_weights_hash_is_stable_and_tracks_the_weights(tiny_model_dir, tmp_path) -> None:
    import shutil

    from transformers import LlamaForCausalLM

    first = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32").weights_hash
    again = TextBackbone.from_pretrained(tiny_model_dir, dtype="bfloat16").weights_hash
    assert first == again  # identity of the files, not of the in-memory precision
    changed_dir = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed_dir)
    model = LlamaForCausalLM.from_pretrained(changed_dir)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.save_pretrained(changed_dir)
    assert TextBackbone.from_pretrained(changed_dir, dtype="float32").weights_hash != first


def test_kv_cache_bytes_per_token_is_what_the_model_caches(tiny_backbone: TextBackbone) -> None:
    ids = torch.tensor([tiny_backbone.tokenize([CLINICAL_SENTENCES[0]])[0]])
    with torch.no_grad():
        cache = tiny_backbone.model(input_ids=ids, use_cache=True).past_key_values
    cached = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert tiny_backbone.kv_cache_bytes_per_token == cached // ids.shape[1]


def test_generation_splits_a_batch_whose_cache_would_not_fit(
    tiny_backbone: TextBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = CLINICAL_SENTENCES[:5]
    longest_row = max(len(ids) for ids in tiny_backbone.tokenize(prompts)) + 5  # prompt + max_new_tokens
    rows_per_call: list[int] = []
    plain_generate = tiny_backbone.model.generate

    def counting_generate(**kwargs: object) -> torch.Tensor:
        rows_per_call.append(len(kwargs["input_ids"]))  # type: ignore[arg-type]
        return plain_generate(**kwargs)

    monkeypatch.setattr(tiny_backbone.model, "generate", counting_generate)
    two_rows = 2 * longest_row * tiny_backbone.kv_cache_bytes_per_token / text.KV_CACHE_MEMORY_SHARE
    for memory, expected_rows in ((two_rows, [2, 2, 1]), (100 * two_rows, [5]), (0, [5])):  # 0: unknown
        monkeypatch.setattr(text, "available_memory", lambda device=None, memory=memory: int(memory))
        rows_per_call.clear()
        answers = tiny_backbone.generate(prompts, max_new_tokens=5, batch_size=5)
        assert rows_per_call == expected_rows
        assert answers == [tiny_backbone.generate(p, max_new_tokens=5)[0] for p in prompts]


def test_compiled_training_gives_the_eager_hidden_states_and_gradients(tiny_backbone: TextBackbone) -> None:
    torch.manual_seed(0)
    for rows, length in ((3, 7), (4, 9)):  # two shapes through one compiled (dynamic) decoder
        embeds = torch.randn(rows, length, tiny_backbone.hidden_size, requires_grad=True)
        mask = torch.ones(rows, length, dtype=torch.long)
        mask[1, length - 2 :] = 0  # right padding, as training rows have
        eager = tiny_backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask)
        (eager_grad,) = torch.autograd.grad(eager.square().sum(), embeds)
        with tiny_backbone.compiled_training():
            compiled = tiny_backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask)
            (compiled_grad,) = torch.autograd.grad(compiled.square().sum(), embeds)
            assert tiny_backbone._training_decoder is not None  # compiled, not the eager fallback
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


def test_a_failing_training_compile_falls_back_to_eager_with_one_warning(
    tiny_backbone: TextBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(module: torch.nn.Module, **options: object) -> object:
        def run(**inputs: object) -> object:
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    ids = torch.tensor(tiny_backbone.tokenize(CLINICAL_SENTENCES[:1]))
    eager = tiny_backbone.last_hidden_state(input_ids=ids)
    with tiny_backbone.compiled_training():
        with torch.no_grad():  # gradient-free forwards never take the compiled path
            torch.testing.assert_close(tiny_backbone.last_hidden_state(input_ids=ids), eager)
        with pytest.warns(UserWarning, match="compiled training failed .*no C.. compiler.*trains eagerly") as caught:
            first = tiny_backbone.last_hidden_state(input_ids=ids)
            second = tiny_backbone.last_hidden_state(input_ids=ids)
    assert len([w for w in caught if "compiled training failed" in str(w.message)]) == 1
    torch.testing.assert_close(first, eager)
    torch.testing.assert_close(second, eager)


def test_a_compile_that_fails_at_once_trains_eagerly_with_one_warning(
    tiny_backbone: TextBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(module: torch.nn.Module, **options: object) -> object:
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unsupported)
    ids = torch.tensor(tiny_backbone.tokenize(CLINICAL_SENTENCES[:1]))
    eager = tiny_backbone.last_hidden_state(input_ids=ids)
    failed = "compiled training failed .*not supported.*trains eagerly"
    with pytest.warns(UserWarning, match=failed) as caught, tiny_backbone.compiled_training():
        torch.testing.assert_close(tiny_backbone.last_hidden_state(input_ids=ids), eager)
    assert len([w for w in caught if "compiled training failed" in str(w.message)]) == 1


def test_a_compile_that_fails_in_the_backward_trains_eagerly_with_one_warning(
    tiny_backbone: TextBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._dynamo.backends.common import aot_autograd

    backward_compiles: list[int] = []

    def failing_backward(graph: torch.fx.GraphModule, example_inputs: object) -> object:
        backward_compiles.append(1)
        raise RuntimeError("the backward kernel did not build")

    plain_compile = torch.compile
    backend = aot_autograd(fw_compiler=lambda graph, example_inputs: graph, bw_compiler=failing_backward)
    monkeypatch.setattr(torch, "compile", lambda module, **options: plain_compile(module, backend=backend))
    torch.manual_seed(0)
    embeds = torch.randn(2, 6, tiny_backbone.hidden_size, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.long)
    (eager_grad,) = torch.autograd.grad(
        tiny_backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask).square().sum(), embeds
    )
    failed = "compiled training failed .*backward kernel did not build.*trains eagerly"
    with pytest.warns(UserWarning, match=failed) as caught, tiny_backbone.compiled_training():
        for _ in range(2):  # a training step each: the loss's backward must work, on the eager decoder
            hidden = tiny_backbone.last_hidden_state(inputs_embeds=embeds, attention_mask=mask)
            (grad,) = torch.autograd.grad(hidden.square().sum(), embeds)
            torch.testing.assert_close(grad, eager_grad)
    assert backward_compiles, "the backend's backward compiler was never reached"
    assert len([w for w in caught if "compiled training failed" in str(w.message)]) == 1


def test_the_cache_budget_counts_a_tiny_memory_and_the_compiled_cache_rounding(
    tiny_backbone: TextBackbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = CLINICAL_SENTENCES[:3]
    rows_per_call: list[int] = []

    def counting_generate(**kwargs: object) -> torch.Tensor:  # eager, whatever compile_decoding says
        rows_per_call.append(len(kwargs["input_ids"]))  # type: ignore[arg-type]
        return tiny_backbone.model.generate(**kwargs)

    monkeypatch.setattr(tiny_backbone, "_generate", counting_generate)
    longest_row = max(len(ids) for ids in tiny_backbone.tokenize(prompts)) + 5  # prompt + max_new_tokens
    three_rows = 3 * longest_row * tiny_backbone.kv_cache_bytes_per_token / text.KV_CACHE_MEMORY_SHARE
    # 1 byte: known and too small for any batch, so one row at a time (0 would mean unknown); a
    # compiled step's static cache adds up to STATIC_CACHE_BUCKET - 1 tokens to every row
    for memory, compiled, expected_rows in (
        (1, False, [1, 1, 1]),
        (three_rows, False, [3]),
        (three_rows, True, [1, 1, 1]),
    ):
        monkeypatch.setattr(text, "available_memory", lambda device=None, memory=memory: int(memory))
        monkeypatch.setattr(tiny_backbone, "compile_decoding", compiled)
        rows_per_call.clear()
        tiny_backbone.generate(prompts, max_new_tokens=5, batch_size=3)
        assert rows_per_call == expected_rows, (memory, compiled)
