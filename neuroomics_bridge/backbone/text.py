"""TextBackbone: one LLaMA-family causal LM as both text encoder and text decoder.

The encoder side pools the decoder's last hidden states (mean over real tokens, or the last
token), in length-sorted batches so little compute is spent on padding. The decoder side wraps
``generate`` with left-padded batching, context-safe truncation and soft prefix tokens
(LLaVA-style ``inputs_embeds``), returning only the new text.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

import torch
import torch.nn.functional as F

from neuroomics_bridge.backbone import resolve
from neuroomics_bridge.backbone.cards import COMPLETION_TEMPLATE, ModelCard
from neuroomics_bridge.backbone.config import BackboneConfig, Kernel, Pooling
from neuroomics_bridge.backbone.gguf import convert_gguf
from neuroomics_bridge.backbone.hardware import (
    available_memory,
    default_device,
    default_dtype,
    resolve_dtype,
    route_single_row_matmuls_to_aten,
    single_row_kernel,
    timed_cpu_dtype,
)
from neuroomics_bridge.backbone.packed import PACKABLE_DTYPES, drop_packed_weights, pack_linear_weights
from neuroomics_bridge.backbone.packing import padded_output
from neuroomics_bridge.backbone.quantize import Int8Linear, quantize_int8
from neuroomics_bridge.errors import ConfigError, CorruptFileError, DataError
from neuroomics_bridge.progress import progress, quiet_transformers_progress
from neuroomics_bridge.yamlconfig import check_choice

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["TextBackbone", "COMPLETION_TEMPLATE", "Pooling"]

STATIC_CACHE_BUCKET = 256
"""Compiled decoding sizes its static cache in multiples of this many tokens (one graph per size)."""
KV_CACHE_MEMORY_SHARE = 0.5
"""Most of the memory available when ``generate`` starts that one batch's key/value cache may
take; a batch that would need more is split (a 7B LLaMA's cache holds 0.5 MB a token)."""


Messages = str | Sequence[Mapping[str, str]]


class TextBackbone:
    """A causal language model with its tokenizer, used to encode and to generate text.

    Build it with :meth:`from_pretrained` (registry name, local directory or ``.gguf`` file) or
    directly from a loaded ``transformers`` model and tokenizer.

    Parameters
    ----------
    model
        The causal LM; put in eval mode, with its CPU linear layers on the kernel that measured
        fastest here for a decoding step (:func:`~neuroomics_bridge.backbone.hardware.single_row_kernel`):
        single rows through ATen, oneDNN as is, or oneDNN on prepacked weights
        (:class:`~neuroomics_bridge.backbone.packed.PackedLinear`, for gradient-free forwards).
    tokenizer
        Its tokenizer; a missing pad token is set to the EOS token.
    name
        The registry id, or the path it was loaded from.
    card
        The registry card, if any (context length, chat template).
    weight_files
        The files whose contents identify the weights (:attr:`weights_hash`); empty: hash the
        tensors.
    compile_decoding
        Decode with a static key/value cache and ``torch.compile`` (see :meth:`generate`); an
        attribute, so it can be switched on a loaded backbone.
    kernel
        The single-row kernel: ``"auto"`` (timed, see ``model``), or ``"aten"``, ``"onednn"``
        or ``"packed"`` to force one, or the opt-in ``"bf16-copy"`` for a float32 model
        (:data:`~neuroomics_bridge.backbone.config.Kernel`; a model not on the CPU takes only
        ``"auto"`` or ``"onednn"``, which leave it as it is).

    Raises
    ------
    ConfigError
        On an unknown ``kernel``, a CPU kernel for a model elsewhere, ``"packed"`` for a dtype
        oneDNN cannot pack on this CPU (:data:`~neuroomics_bridge.backbone.packed.PACKABLE_DTYPES`),
        or ``"bf16-copy"`` for a model that is not float32 or whose linear layers are int8.

    Attributes
    ----------
    pack_rows
        Whether :meth:`last_hidden_state` runs a right-padded batch as one packed sequence of
        its real tokens (:mod:`~neuroomics_bridge.backbone.packing`: the same loss and
        gradients, no compute on padding); ``True`` by default, ``False`` runs it padded.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        card: ModelCard | None = None,
        weight_files: Sequence[Path] = (),
        compile_decoding: bool = False,
        kernel: Kernel = "auto",
    ) -> None:
        check_choice("TextBackbone", "kernel", kernel, get_args(Kernel))
        if model.device.type != "cpu" and kernel in ("aten", "packed", "bf16-copy"):
            raise ConfigError(f"kernel: {kernel!r} is a CPU kernel, and {name} is not on the CPU")
        if kernel == "bf16-copy" and model.dtype != torch.float32:
            raise ConfigError(f"kernel: 'bf16-copy' is for float32 models, and {name} is loaded as {model.dtype}")
        if kernel == "bf16-copy" and _has_int8_layers(model):
            raise ConfigError(
                f"kernel: 'bf16-copy' copies float32 linear weights, and {name}'s are int8 (quantize='int8'); "
                "use one of the two"
            )
        if kernel == "packed" and model.dtype not in PACKABLE_DTYPES:
            raise ConfigError(
                f"kernel: 'packed' needs oneDNN to pack {model.dtype} weights, which this CPU's instructions "
                f"({torch.backends.cpu.get_cpu_capability()}) do not allow; use 'auto', 'aten' or 'onednn'"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.card = card
        self._weight_files = tuple(weight_files)
        self.compile_decoding = compile_decoding
        self.pack_rows = True
        self._training_decoder: Any = None  # the compiled decoder inside compiled_training()
        self._training_backward_built = False  # whether its backward has compiled (at the first backward)
        self._kernel = single_row_kernel(self.model) if kernel == "auto" else kernel  # timed once, then cached
        if self._kernel == "aten":
            route_single_row_matmuls_to_aten(self.model)
        elif self._kernel == "packed":
            pack_linear_weights(self.model)
        elif self._kernel == "bf16-copy":
            pack_linear_weights(self.model, row_dtype=torch.bfloat16)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_config(cls, config: BackboneConfig) -> Self:
        """Load the backbone a :class:`BackboneConfig` (e.g. a YAML recipe's ``backbone:``) describes."""
        return cls.from_pretrained(
            config.name,
            local_dir=config.local_dir,
            dtype=None if config.dtype == "auto" else config.dtype,
            device=None if config.device == "auto" else config.device,
            quantize=None if config.quantize == "none" else config.quantize,
            compile_decoding=config.compile_decoding,
            kernel=config.kernel,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        local_dir: str | os.PathLike[str] | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        quantize: Literal["int8"] | None = None,
        compile_decoding: bool = False,
        kernel: Kernel = "auto",
    ) -> Self:
        """Load a backbone without touching the network.

        Parameters
        ----------
        name_or_path
            A registry id (``nob cards``), a Hugging Face model directory, or a ``.gguf`` file.
        local_dir
            For gated registry entries: the directory holding their weights (else
            ``$NOB_MODEL_DIR/<id>``).
        dtype
            ``None``: on a GPU the card's release half type (float16 where bf16 is
            unsupported); on a CPU bf16 where it runs natively, else float32, and with native
            bf16 float32 where it times faster for both a decoding step and a 64-row block of
            this model's layers (:func:`~neuroomics_bridge.backbone.hardware.timed_cpu_dtype`).
        device
            ``None`` picks CUDA when present; ``"auto"`` spreads a large model over all GPUs.
        quantize
            ``"int8"``: every linear layer's weight as int8 with per-row scales
            (:func:`~neuroomics_bridge.backbone.quantize.quantize_int8`), for CPU inference:
            about half the weight memory and faster batch-1 decoding, at a measured cost in
            accuracy (README, "Performance"). Not for training. ``None`` keeps ``dtype``.
        compile_decoding
            Opt-in: decode with a static key/value cache and ``torch.compile`` (see
            :meth:`generate`).
        kernel
            ``"auto"`` times the single-row kernels on this CPU; ``"aten"``, ``"onednn"`` or
            ``"packed"`` forces one. ``"bf16-copy"`` (opt-in, float32 models): decoding steps
            read a bf16 copy of the weights, half the bytes; faster where float32 is the CPU's
            dtype (an AVX2-only CPU), at a cost in accuracy (README, "Performance"). The copy
            takes half the float32 weights' memory again.

        Raises
        ------
        ModelNotFoundError, InvalidModelError, CorruptFileError
        ConfigError
            On an unknown ``quantize`` or ``kernel``, ``"int8"`` for a model not on the CPU, a CPU
            kernel for a model elsewhere, ``"packed"`` for a dtype this CPU cannot pack, or
            ``"bf16-copy"`` for a model that is not float32 or with ``quantize="int8"``.
        """
        check_choice("TextBackbone", "kernel", kernel, get_args(Kernel))  # before the weights load
        location = resolve.locate_weights(name_or_path, local_dir=local_dir)
        if location.is_gguf:
            directory = convert_gguf(location.path, digest=location.card.weights.sha256 if location.card else None)
            weight_files = [location.path]
        else:
            directory = location.path
            resolve.check_model_dir(directory)
            weight_files = resolve.weight_files(directory)
        card = location.card
        device_map = _device_map(device)
        if dtype is None:
            preferred = resolve_dtype(card.dtype) if card else torch.bfloat16
            torch_dtype = default_dtype(_first_device(device_map), preferred=preferred)
            if torch_dtype == torch.bfloat16 and _first_device(device_map).type == "cpu":
                torch_dtype = timed_cpu_dtype(_linear_shapes(directory))
        else:
            torch_dtype = resolve_dtype(dtype)
        if quantize not in (None, "int8"):
            raise ConfigError(f"quantize: expected None or 'int8', got {quantize!r}")
        model, tokenizer = _load(directory, torch_dtype, device_map)
        if quantize == "int8":
            quantize_int8(model)
        name = card.id if card else str(location.path.resolve())
        return cls(
            model,
            tokenizer,
            name=name,
            card=card,
            weight_files=weight_files,
            compile_decoding=compile_decoding,
            kernel=kernel,
        )

    # ----------------------------------------------------------------------------- properties
    @property
    def hidden_size(self) -> int:
        """Width of the hidden states, and of soft prefix tokens."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def context_length(self) -> int:
        """Longest sequence (prompt + prefix + new tokens) the model accepts."""
        if self.card is not None:
            return self.card.context_length
        return int(self.model.config.get_text_config().max_position_embeddings)

    @property
    def device(self) -> torch.device:
        """The device of the input embeddings, where inputs are placed."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the input embeddings (the precision the model runs in)."""
        return self.model.get_input_embeddings().weight.dtype

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Bytes of key/value cache one token of one generated row holds (keys and values of
        every layer, in :attr:`dtype`): 23 KB for the default backbone, 0.5 MB for a 7B LLaMA-2."""
        config = self.model.config.get_text_config()
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * config.num_hidden_layers * kv_heads * head_dim * self.dtype.itemsize

    @property
    def chat_template(self) -> str:
        """The card's template, else the tokenizer's own, else :data:`COMPLETION_TEMPLATE`."""
        if self.card is not None and self.card.chat_template:
            return self.card.chat_template
        return self.tokenizer.chat_template or COMPLETION_TEMPLATE

    @functools.cached_property
    def weights_hash(self) -> str:
        """SHA-256 identifying the weights (of their files, or of the tensors when built in memory)."""
        if self._weight_files:
            return resolve.weights_sha256(list(self._weight_files))
        return _state_dict_sha256(self.model)

    def _stop_criteria(self, stop: tuple[str, ...]) -> Any:
        """transformers' stop-string criterion, built once per stop set: its constructor scans the
        whole vocabulary (about a second for 49k tokens), which dominated batched report writing."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        cache = self.__dict__.setdefault("_stop_cache", {})
        if stop not in cache:
            cache[stop] = StoppingCriteriaList([StopStringCriteria(self.tokenizer, list(stop))])
        return cache[stop]

    def mark_weights_changed(self, name: str | None = None) -> None:
        """Say the weights were changed in place, so :attr:`weights_hash` is recomputed from the tensors
        (and prepacked inference copies of them rebuilt).

        An adapter trained on the old weights is then no longer taken for one trained on these.

        Parameters
        ----------
        name
            A new :attr:`name` for the changed model (default: keep it).
        """
        self._weight_files = ()
        self.__dict__.pop("weights_hash", None)
        drop_packed_weights(self.model)
        if name is not None:
            self.name = name

    @property
    def kernel(self) -> Kernel:
        """The single-row kernel the linear layers run: as passed, or the one timed fastest for ``"auto"``."""
        return self._kernel

    @property
    def quantization(self) -> Literal["int8"] | None:
        """``"int8"`` when the linear layers hold int8 weights (``from_pretrained(quantize=)``), else ``None``."""
        return "int8" if _has_int8_layers(self.model) else None

    def check_trainable(self, what: str) -> None:
        """Raise :class:`~neuroomics_bridge.errors.ConfigError` when ``what`` would train weights
        this backbone cannot train (int8 linear layers are for inference)."""
        if self.quantization is not None:
            raise ConfigError(
                f"{what} trains the weights of {self.name}, loaded with quantize={self.quantization!r} "
                "(inference only); load it without quantize to train"
            )

    def __repr__(self) -> str:
        int8 = sum(m.weight.numel() for m in self.model.modules() if isinstance(m, Int8Linear))
        n_params = sum(p.numel() for p in self.model.parameters()) + int8
        weights = f"dtype={self.dtype}" + (", int8 linear weights" if int8 else "")
        weights += ", bf16 copy for single rows" if self.kernel == "bf16-copy" else ""
        return f"TextBackbone({self.name!r}, params={n_params / 1e6:.1f}M, {weights}, device={self.device})"

    # ----------------------------------------------------------------------------- prompting
    def chat(self, messages: Messages, *, add_generation_prompt: bool = True, template: str | None = None) -> str:
        """Format ``messages`` as one prompt string with the backbone's chat template.

        Parameters
        ----------
        messages
            ``{"role": ..., "content": ...}`` turns; a string is one user turn.
        add_generation_prompt
            End with the template's opening of the assistant's turn.
        template
            A Jinja template used instead of :attr:`chat_template` (e.g. :data:`COMPLETION_TEMPLATE`
            to prompt a chat model as a base model).
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return self.tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            chat_template=template or self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def tokenize(self, texts: Sequence[str], *, special_tokens: bool = True) -> list[list[int]]:
        """Token ids of each text, unpadded.

        Parameters
        ----------
        texts
            The texts.
        special_tokens
            Add the tokenizer's own special tokens (e.g. BOS).
        """
        return self.tokenizer(list(texts), add_special_tokens=special_tokens)["input_ids"]

    # ----------------------------------------------------------------------------- encoding
    @torch.inference_mode()
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        pooling: Pooling = "mean",
        batch_size: int = 16,
        normalize: bool = False,
        max_length: int | None = None,
        show_progress: bool | None = None,
    ) -> torch.Tensor:
        """Pooled last hidden states of each text, the backbone used as a text encoder.

        The output does not depend on ``batch_size`` or input order beyond floating-point rounding.

        Parameters
        ----------
        texts
            One text or several; none may be empty.
        pooling
            ``"mean"`` averages over real tokens, ``"last"`` takes the final token (the usual
            choice for decoder-only embedders).
        batch_size
            Texts per forward pass (batches are formed by length).
        normalize
            Scale each vector to unit L2 norm.
        max_length
            Longer texts are cut from the right with a warning (default and upper bound: the
            context length).
        show_progress
            Show a progress bar; ``None``: only when stderr is a terminal.

        Returns
        -------
        torch.Tensor
            ``(n_texts, hidden_size)`` float32 on CPU.

        Raises
        ------
        DataError
            On an unknown ``pooling``, an empty text or ``batch_size < 1``.
        """
        if pooling not in ("mean", "last"):
            raise DataError(f"pooling: expected 'mean' or 'last', got {pooling!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        limit = min(max_length or self.context_length, self.context_length)
        token_ids = self.tokenize(texts)
        for i, ids in enumerate(token_ids):
            if not ids:
                raise DataError(f"texts[{i}] is empty: nothing to encode")
        token_ids = _truncate(token_ids, limit, side="right", what="texts for encode")
        decoder = self.model.get_decoder()
        pooled = torch.empty(len(texts), self.hidden_size, dtype=torch.float32)
        for batch in _length_sorted_batches(token_ids, batch_size, show_progress, desc="encode"):
            ids, mask = _pad([token_ids[i] for i in batch], self.tokenizer.pad_token_id, side="right")
            ids, mask = ids.to(self.device), mask.to(self.device)
            # Causal attention with right padding: real tokens never attend to the pads after
            # them, so no attention mask is needed, and SDPA's unmasked kernel is ~20% faster.
            hidden = decoder(input_ids=ids).last_hidden_state.float()
            pooled[batch] = _pool(hidden, mask, pooling).cpu()
        return F.normalize(pooled, dim=-1) if normalize else pooled

    @torch.inference_mode()
    def loglikelihood(
        self,
        contexts: Sequence[str],
        continuations: Sequence[str],
        *,
        show_progress: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of each continuation given its context (lm-eval's ``loglikelihood``).

        Context and continuation are tokenised apart (the context with the tokenizer's special
        tokens), so the continuation's tokens are the same whatever precedes them. Contexts that
        do not fit are cut from the left with a warning.

        Pairs that share a context (the options of one question) share its forward pass: the
        context runs once, its last hidden state scores every continuation's first token, and
        longer continuations run together on the context's key/value cache. The LM head runs on
        continuation positions only.

        Parameters
        ----------
        contexts, continuations
            Equally long; pair ``i`` is ``(contexts[i], continuations[i])``.
        show_progress
            Show a progress bar; ``None``: only when stderr is a terminal.

        Returns
        -------
        logprob : torch.Tensor
            ``(n_pairs,)`` float64: the summed log-probability of each continuation's tokens.
        n_tokens : torch.Tensor
            ``(n_pairs,)``: the number of those tokens.

        Raises
        ------
        DataError
            On unequal lengths, an empty continuation or context, or a continuation that does not
            fit the context length.
        """
        if len(contexts) != len(continuations):
            raise DataError(f"loglikelihood: {len(contexts)} contexts but {len(continuations)} continuations")
        targets = self.tokenize(list(continuations), special_tokens=False)
        empty = [i for i, ids in enumerate(targets) if not ids]
        if empty:
            raise DataError(f"continuations[{empty[0]}] is empty: nothing to score")
        too_long = [i for i, ids in enumerate(targets) if len(ids) >= self.context_length]
        if too_long:
            raise DataError(f"continuations[{too_long[0]}] does not fit the {self.context_length}-token context")
        prompts = self.tokenize(list(contexts))
        cut = [
            i
            for i, (ids, t) in enumerate(zip(prompts, targets, strict=True))
            if len(ids) + len(t) > self.context_length
        ]
        if cut:
            warnings.warn(
                f"{len(cut)} of {len(prompts)} contexts for loglikelihood do not fit the {self.context_length}-token "
                "context with their continuation; cut from the left to fit",
                stacklevel=3,  # the caller, past inference_mode's wrapper
            )
            for i in cut:
                prompts[i] = prompts[i][len(prompts[i]) + len(targets[i]) - self.context_length :]
        empty = [i for i, ids in enumerate(prompts) if not ids]
        if empty:
            raise DataError(f"contexts[{empty[0]}] is empty: a continuation needs something to follow")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(tuple(prompt), []).append(i)
        logprob = torch.zeros(len(prompts), dtype=torch.float64)
        for context in progress(
            sorted(groups, key=len, reverse=True), desc="loglikelihood", show=show_progress, unit="context"
        ):
            members = groups[context]
            for i, scores in zip(
                members, self._score_continuations(context, [targets[i] for i in members]), strict=True
            ):
                logprob[i] = scores
        return logprob, torch.tensor([len(t) for t in targets])

    def _score_continuations(self, context: Sequence[int], continuations: list[list[int]]) -> list[float]:
        """Summed log-probabilities of several continuations of one context (see :meth:`loglikelihood`)."""
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        out = decoder(input_ids=torch.tensor([list(context)], device=self.device), use_cache=True)
        first = head(out.last_hidden_state[0, -1]).float().log_softmax(-1)
        sums = [float(first[ids[0]]) for ids in continuations]
        longer = [j for j, ids in enumerate(continuations) if len(ids) > 1]
        if longer:
            cache = out.cache
            cache.batch_repeat_interleave(len(longer))
            # Right padding needs no mask: causal attention never looks at the pads after a token.
            ids, _ = _pad([continuations[j][:-1] for j in longer], self.tokenizer.pad_token_id, side="right")
            hidden = decoder(input_ids=ids.to(self.device), cache=cache, use_cache=True).last_hidden_state
            for row, j in enumerate(longer):
                rest = torch.tensor(continuations[j][1:], device=hidden.device)
                scores = head(hidden[row, : len(rest)]).float().log_softmax(-1)
                sums[j] += float(scores.gather(1, rest[:, None]).sum())
        return sums

    # ----------------------------------------------------------------------------- decoding
    def prefixed_inputs(
        self,
        token_ids: Sequence[Sequence[int]],
        prefix_embeds: torch.Tensor | None,
        *,
        padding_side: Literal["left", "right"] = "left",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs_embeds`` laid out as ``[prefix][tokens]`` per row, padded, and the mask.

        Gradients flow into ``prefix_embeds``, so training code builds its inputs with this too.

        Parameters
        ----------
        token_ids
            ``n`` rows of token ids.
        prefix_embeds
            ``(n, k, hidden_size)`` soft tokens (k may be 0), or ``None`` for none.
        padding_side
            Where the padding goes.

        Returns
        -------
        embeds : torch.Tensor
            ``(n, width, hidden_size)`` in the model's dtype, ``width`` the longest row plus ``k``.
        mask : torch.Tensor
            ``(n, width)``: 1 for real positions, 0 for padding.

        Raises
        ------
        DataError
            When ``prefix_embeds`` has the wrong shape.
        """
        n = len(token_ids)
        k = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        if prefix_embeds is not None and tuple(prefix_embeds.shape) != (n, k, self.hidden_size):
            raise DataError(
                f"prefix_embeds: expected shape ({n}, k, {self.hidden_size}), got {tuple(prefix_embeds.shape)}"
            )
        embed = self.model.get_input_embeddings()
        width = max(len(ids) for ids in token_ids) + k
        rows, masks = [], []
        for i, ids in enumerate(token_ids):
            tokens = embed(torch.tensor(list(ids), dtype=torch.long, device=self.device))
            parts = [tokens] if prefix_embeds is None else [prefix_embeds[i].to(self.device, self.dtype), tokens]
            row = torch.cat(parts)
            pad = row.new_zeros(width - row.shape[0], row.shape[1])
            real = torch.ones(row.shape[0], dtype=torch.long, device=self.device)
            empty = real.new_zeros(pad.shape[0])
            rows.append(torch.cat([pad, row] if padding_side == "left" else [row, pad]))
            masks.append(torch.cat([empty, real] if padding_side == "left" else [real, empty]))
        return torch.stack(rows), torch.stack(masks)

    @torch.inference_mode()
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        prefix_embeds: torch.Tensor | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.9,
        batch_size: int = 8,
        prompt_lookup: int = 0,
        stop: Sequence[str] = (),
        no_repeat_ngram_size: int = 0,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Continue each prompt; return only the new text, one string per prompt.

        Prompts that would not fit the context with the prefix and ``max_new_tokens`` are cut
        from the left with a warning. Sampling is seeded by the global torch seed.

        With :attr:`compile_decoding` (opt-in) the decoding steps run ``torch.compile``'d over
        transformers' static key/value cache, sized in multiples of
        :data:`STATIC_CACHE_BUCKET` tokens: the first call per cache size and batch size
        compiles (tens of seconds on a CPU, less with a warm inductor cache), later ones reuse
        it. Fused kernels round differently, so greedy text can differ from eager decoding in
        bf16 (README, "Performance"); a failed compile falls back to eager decoding with one
        warning. Prompt-lookup calls always decode eagerly.

        Parameters
        ----------
        prompts
            One prompt or several (already formatted, e.g. by :meth:`chat`).
        prefix_embeds
            ``(n, k, hidden_size)`` soft tokens placed before each prompt's token embeddings (a
            zero-width prefix gives plain generation).
        max_new_tokens
            Most tokens generated per prompt.
        do_sample, temperature, top_p
            Sample with these settings instead of greedy decoding.
        batch_size
            Most prompts per ``generate`` call (batches are formed by length). A batch whose
            key/value cache would take more than :data:`KV_CACHE_MEMORY_SHARE` of the memory
            available now is split, so a large backbone does not run out of memory.
        prompt_lookup
            ``n`` drafts ``n`` tokens from n-grams of the prompt and verifies them in one forward
            pass (transformers' prompt-lookup decoding), for one greedy prompt without a prefix; it
            keeps the greedy result and pays off on GPUs for summaries that copy from their input,
            but on CPU single-row decoding is faster without it.
        stop
            Generation of a prompt ends at the first of these strings, which is cut off.
        no_repeat_ngram_size
            ``n`` forbids repeating any n-gram (small models otherwise loop): of prompt and
            answer, or, with ``prefix_embeds``, of the answer alone.
        show_progress
            Show a progress bar; ``None``: only when stderr is a terminal.

        Returns
        -------
        list of str
            The new text of each prompt, stripped.

        Raises
        ------
        DataError
            When ``max_new_tokens`` is under 1 or, with the prefix, leaves no room for a prompt, or
            ``batch_size < 1``.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if max_new_tokens < 1:
            raise DataError(f"max_new_tokens: expected at least 1 token to generate, got {max_new_tokens}")
        k = 0 if prefix_embeds is None else int(prefix_embeds.shape[1])
        budget = self.context_length - max_new_tokens - k
        if budget < 1:
            raise DataError(
                f"max_new_tokens={max_new_tokens} plus {k} prefix tokens leave no room for a prompt "
                f"in the {self.context_length}-token context of {self.name}"
            )
        token_ids = _truncate(self.tokenize(prompts), budget, side="left", what="prompts for generate")
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if stop:
            options.update(stopping_criteria=self._stop_criteria(tuple(stop)))
        if no_repeat_ngram_size:
            options.update(no_repeat_ngram_size=no_repeat_ngram_size)
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # unset sampling knobs a checkpoint's generation_config may carry
            options.update(temperature=None, top_p=None, top_k=None)
        texts: list[str] = [""] * len(prompts)
        memory = available_memory(self.device)  # 0: unknown, so batches are not split
        # a compiled step's static cache rounds each batch's length up to the next bucket
        rounding = STATIC_CACHE_BUCKET - 1 if self.compile_decoding else 0
        batches = _length_sorted_batches(
            token_ids,
            batch_size,
            show_progress,
            desc="generate",
            token_budget=int(KV_CACHE_MEMORY_SHARE * memory) // self.kv_cache_bytes_per_token if memory else None,
            row_extra=k + max_new_tokens + rounding,
        )
        for batch in batches:
            rows = [token_ids[i] for i in batch]
            if prefix_embeds is None:
                ids, mask = _pad(rows, self.tokenizer.pad_token_id, side="left")
                lookup = (
                    {"prompt_lookup_num_tokens": prompt_lookup}
                    if prompt_lookup and len(rows) == 1 and not do_sample
                    else {}
                )
                out = self._generate(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **options, **lookup
                )
                new_tokens = out[:, ids.shape[1] :]
            else:
                embeds, mask = self.prefixed_inputs(rows, prefix_embeds[batch])
                with warnings.catch_warnings():  # n-grams then apply to the new tokens only, as documented
                    warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with `inputs_embeds`")
                    new_tokens = self._generate(inputs_embeds=embeds, attention_mask=mask, **options)
            for i, text in zip(batch, self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
                texts[i] = _cut_at(text, stop).strip()
        return texts

    def last_hidden_state(self, **inputs: Any) -> torch.Tensor:
        """The decoder's last hidden states (no LM head): what training losses score from.

        A right-padded batch runs as one packed sequence of its real tokens (with
        :attr:`pack_rows`, where :func:`~neuroomics_bridge.backbone.packing.pack_inputs` finds
        that exact): the same hidden states at real positions, zero at padding, without the
        padding's compute. Inside :meth:`compiled_training`, calls with gradients on run the
        ``torch.compile``'d decoder; a compile that fails (no C++ compiler, an unsupported op)
        switches it off with one warning and the call runs eagerly. torch compiles the backward
        only when it first runs, inside the loss's ``backward()``, where nothing could fall back
        any more; so the first compiled call runs a forward and its backward (zero gradients,
        nothing accumulated) before the forward it returns, and a backward that fails to compile
        falls back here too.

        Parameters
        ----------
        **inputs
            The decoder's keyword inputs (``input_ids`` or ``inputs_embeds``, ``attention_mask``,
            ``use_cache`` ...).

        Returns
        -------
        torch.Tensor
            ``(batch, length, hidden_size)``.
        """
        if self.pack_rows:
            return padded_output(self.model, self._decoder_output, inputs)
        return self._decoder_output(inputs)

    def _decoder_output(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The last hidden states of the decoder on ``inputs``, compiled where
        :meth:`last_hidden_state` says."""
        if self._training_decoder is not None and torch.is_grad_enabled():
            try:
                if not self._training_backward_built:  # one backward first: a failing backward compile fails here
                    probe = self._training_decoder(**inputs).last_hidden_state
                    _build_backward(probe, [*inputs.values(), *self.model.parameters()])
                    self._training_backward_built = True
                return self._training_decoder(**inputs).last_hidden_state
            except Exception as err:  # any compiler failure; the eager call below re-raises the rest
                self._warn_compile_failed("training", "trains", err)
                self._training_decoder = None
        return self.model.get_decoder()(**inputs).last_hidden_state

    @contextlib.contextmanager
    def compiled_training(self) -> Iterator[None]:
        """Within the block, training forwards (:meth:`last_hidden_state` with gradients on)
        run the decoder through ``torch.compile`` (dynamic shapes, so batches of other sizes and
        lengths mostly reuse one graph).

        Compiled, a prefix-stage step takes about three quarters of the eager one on a 2-core CPU
        (README, "Performance"); the first step compiles (minutes on a CPU, seconds with a warm
        inductor cache), so it pays off over hundreds of steps or on later runs. Gradient-free
        forwards (validation, generation) stay eager, and the compiled graph is dropped at the
        end of the block. Where ``torch.compile`` itself fails, the block trains eagerly after
        one warning.

        Yields
        ------
        None
            Control, with compiled training forwards, until the block ends.
        """
        # Fused kernels keep float32 intermediates where eager rounds to bf16; in bf16 training
        # that moved the prefix stage's gradients off the eager ones (cosine 0.78; grounding fell
        # on two demo seeds). Rounding as eager does keeps them together (cosine 0.9999).
        self._training_backward_built = False
        try:
            self._training_decoder = torch.compile(
                self.model.get_decoder(), dynamic=True, options={"emulate_precision_casts": True}
            )
        except Exception as err:  # e.g. a Python version Dynamo does not support
            self._warn_compile_failed("training", "trains", err, stacklevel=4)
        try:
            yield
        finally:
            self._training_decoder = None

    def _generate(self, **kwargs: Any) -> torch.Tensor:
        """``model.generate``, compiled over a static cache when :attr:`compile_decoding` is on.

        The cache length is rounded up to :data:`STATIC_CACHE_BUCKET` so prompts of similar length
        reuse one compiled graph. A compile that fails (no C++ compiler, an unsupported op)
        switches compiled decoding off for this backbone with one warning, and this call decodes
        eagerly.
        """
        if self.compile_decoding and "prompt_lookup_num_tokens" not in kwargs:
            inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
            length = -(-(inputs.shape[1] + kwargs["max_new_tokens"]) // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET
            try:
                static = {"cache_implementation": "static", "max_cache_len": length}
                return self.model.generate(**kwargs, **static, compile_config=_decode_compile_config())
            except Exception as err:  # any compiler failure; the eager call below re-raises the rest
                self._warn_compile_failed("decoding", "decodes", err, stacklevel=4)
                self.compile_decoding = False
        return self.model.generate(**kwargs)

    def _warn_compile_failed(self, what: str, verb: str, err: Exception, stacklevel: int = 3) -> None:
        """The one warning a failed compile gives before this backbone falls back to eager ``what``."""
        warnings.warn(
            f"compiled {what} failed ({type(err).__name__}: {str(err)[:200]}); {self.name} {verb} eagerly from now on",
            stacklevel=stacklevel,
        )


# --------------------------------------------------------------------------------- helpers
def _has_int8_layers(model: torch.nn.Module) -> bool:
    """Whether ``model``'s linear layers hold int8 weights (``quantize_int8``)."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


def _build_backward(output: torch.Tensor, candidates: Sequence[Any]) -> None:
    """Run ``output``'s backward once, with zero gradients, down to the ``candidates`` that need them.

    Whatever compiles lazily at the first backward (a ``torch.compile``'d graph's backward)
    compiles now, and fails now if it fails. Nothing accumulates into ``.grad``, and the graph
    beyond the candidates (e.g. the prefix projector that made ``inputs_embeds``) is not run.
    """
    targets = [t for t in candidates if isinstance(t, torch.Tensor) and t.requires_grad]
    if output.requires_grad and targets:
        torch.autograd.grad(output, targets, torch.zeros_like(output), allow_unused=True)


@functools.cache
def _decode_compile_config() -> Any:
    """transformers' compile settings for decoding: fixed shapes, and CPUs allowed (its default is GPUs only)."""
    from transformers.generation.configuration_utils import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True
    return config


def _device_map(device: str | torch.device | None) -> str | torch.device:
    if device is None:
        return default_device()
    if device == "auto":
        return "auto" if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def _first_device(device_map: str | torch.device) -> torch.device:
    return torch.device("cuda") if device_map == "auto" else torch.device(device_map)


def _load(directory: Path, dtype: torch.dtype, device_map: str | torch.device):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers_progress():
        try:
            model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, device_map=device_map, local_files_only=True, trust_remote_code=False
            )
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        except (OSError, SafetensorError, RuntimeError) as err:
            raise CorruptFileError(
                f"{directory}: the model could not be loaded ({type(err).__name__}: {err})"
            ) from None
    return model, tokenizer


def _linear_shapes(directory: Path) -> list[tuple[int, int]]:
    """``(in_features, out_features)`` of every linear layer of the model in ``directory``, from its
    config alone (the model built on the meta device: no weights read or allocated)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise CorruptFileError(
            f"{directory}: the model config could not be read ({type(err).__name__}: {err})"
        ) from None
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return [(m.in_features, m.out_features) for m in skeleton.modules() if isinstance(m, torch.nn.Linear)]


def _truncate(token_ids: list[list[int]], limit: int, *, side: Literal["left", "right"], what: str) -> list[list[int]]:
    too_long = [i for i, ids in enumerate(token_ids) if len(ids) > limit]
    if not too_long:
        return token_ids
    longest = max(len(token_ids[i]) for i in too_long)
    warnings.warn(
        f"{len(too_long)} of {len(token_ids)} {what} exceed {limit} tokens (longest {longest}); "
        f"cut from the {side} to fit",
        stacklevel=3,
    )
    if side == "left":
        return [ids[-limit:] for ids in token_ids]
    return [ids[:limit] for ids in token_ids]


def _length_sorted_batches(
    token_ids: Sequence[Sequence[int]],
    batch_size: int,
    show_progress: bool | None,
    *,
    desc: str,
    token_budget: int | None = None,
    row_extra: int = 0,
) -> Iterator[list[int]]:
    """Index batches of similar lengths (longest first, so memory peaks early) of at most
    ``batch_size`` rows and, with ``token_budget``, at most that many tokens, each row counted
    as its batch's longest plus ``row_extra`` (one row whatever its length)."""
    if batch_size < 1:
        raise DataError(f"batch_size: expected >= 1, got {batch_size}")
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    batches, start = [], 0
    while start < len(order):
        rows = batch_size
        if token_budget is not None:
            rows = max(1, min(rows, token_budget // (len(token_ids[order[start]]) + row_extra)))
        batches.append(order[start : start + rows])
        start += rows
    yield from progress(batches, desc=desc, show=show_progress, unit="batch")


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, *, side: Literal["left", "right"]
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _cut_at(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(marker) for marker in stop if marker in text]
    return text[: min(cuts)] if cuts else text


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)
    last = mask.sum(1) - 1  # right padding: the final real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _state_dict_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
