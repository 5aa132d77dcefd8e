"""Shared fixtures: a tiny random LLaMA built here, small bridges on it, and the bundled default backbone.

Each test process gets its own cache directory, removed when the process ends, so the default
backbone's GGUF is converted once per process, the user's real cache is never touched, and a
run leaves no half-gigabyte conversion behind in the temp folder. Every test gets torch's
default dtype and thread count back as they were (a test that changes them cannot leak into
the next).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import torch

from neuroomics_bridge import Bridge, BridgeConfig, TextBackbone

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


TEST_CACHE_KEY = pytest.StashKey[Path]()
TINY_BRIDGE_DIMS = {"gene": 6, "brain": 4}
TINY_BRIDGE_CONFIG = BridgeConfig(embed_dim=8, head_hidden=16, prefix_tokens=2)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[TEST_CACHE_KEY] = Path(tempfile.mkdtemp(prefix="nob-test-cache-"))
    os.environ["XDG_CACHE_HOME"] = str(config.stash[TEST_CACHE_KEY])
    os.environ.pop("NOB_MODEL_DIR", None)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))  # set in each pytest-xdist worker
    if workers > 1:  # share the cores: each worker, and every `nob` it starts, gets its part of them
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["NUMBA_NUM_THREADS"] = str(threads)  # numba would reset OpenMP to every core


def pytest_unconfigure(config: pytest.Config) -> None:
    if TEST_CACHE_KEY in config.stash:
        shutil.rmtree(config.stash[TEST_CACHE_KEY], ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first (a stable sort: files keep their order), so that with ``-n 2 --dist
    loadfile --no-loadscope-reorder`` the longest files start at once and the short ones fill
    the gaps, instead of one long file running alone at the end on a single thread."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def restore_torch_globals() -> Iterator[None]:
    """Put torch's default dtype and intra-op thread count back after every test (as litgpt's
    conftest does for the dtype), so a test that sets them cannot change the tests after it."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    yield
    if torch.get_default_dtype() != dtype:
        torch.set_default_dtype(dtype)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


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
def make_bridge(tiny_backbone: TextBackbone) -> Callable[..., Bridge]:
    """Factory of small bridges: ``make_bridge(dims=None, config=None, *, seed=0, backbone=None)``.

    Each call returns a new :class:`Bridge` on ``backbone`` (default: the shared ``tiny_backbone``)
    with modality widths ``dims`` (default :data:`TINY_BRIDGE_DIMS`) and adapter shapes
    ``config`` (default: a copy of :data:`TINY_BRIDGE_CONFIG`); the adapters are initialised after
    ``torch.manual_seed(seed)``, so equal arguments give equal weights. Session-scoped so that
    module-scoped fixtures can use it too; it holds no state of its own.
    """

    def make(
        dims: Mapping[str, int] | None = None,
        config: BridgeConfig | None = None,
        *,
        seed: int = 0,
        backbone: TextBackbone | None = None,
    ) -> Bridge:
        torch.manual_seed(seed)
        return Bridge(
            tiny_backbone if backbone is None else backbone,
            dict(TINY_BRIDGE_DIMS if dims is None else dims),
            dataclasses.replace(TINY_BRIDGE_CONFIG) if config is None else config,
        )

    return make


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
