"""Shared fixtures: a tiny random LLaMA built here, and the bundled default backbone.

The test session gets its own cache directory, so the default backbone's GGUF is converted
once per run and the user's real cache is never touched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from neuroomics_bridge import TextBackbone

CLINICAL_SENTENCES = [
    "The patient presents with resting tremor and bradykinesia.",
    "MRI shows hippocampal atrophy consistent with Alzheimer's disease.",
    "Cerebrospinal fluid analysis revealed oligoclonal bands.",
    "Genetic testing identified an expanded CAG repeat in HTT.",
    "No focal neurological deficit was found on examination.",
    "The subject reports progressive memory decline over two years.",
    "Diffusion tensor imaging showed reduced fractional anisotropy.",
    "Single-cell RNA sequencing of microglia revealed an activated state.",
]


def pytest_configure(config: pytest.Config) -> None:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="nob-test-cache-")
    os.environ.pop("NOB_MODEL_DIR", None)


def _train_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CLINICAL_SENTENCES * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random LLaMA with a BPE tokenizer, saved as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    directory = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_backbone(tiny_model_dir: Path) -> TextBackbone:
    return TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def default_backbone() -> TextBackbone:
    """The bundled SmolLM2-135M-Instruct, in the dtype this machine prefers."""
    return TextBackbone.from_pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def pbmc():
    """scanpy's 700 real PBMCs, log-normalised values (``.raw``), 765 genes, 10 cell types."""
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced().raw.to_adata()


@pytest.fixture(scope="session")
def small_cohort():
    """A 60-subject synthetic cohort (raw genes and brains), shared read-only across tests."""
    from neuroomics_bridge.datasets import synthetic_cohort

    return synthetic_cohort(60, seed=3, cells_per_subject=8, missing_rate=0.05)
