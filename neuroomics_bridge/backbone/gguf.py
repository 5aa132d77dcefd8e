"""GGUF files, de-quantised once into a safetensors cache.

transformers reads GGUF by de-quantising every tensor (about 12 s for the 135M default); the
result is saved as an ordinary Hugging Face directory under the user cache, keyed by the GGUF's
SHA-256, so every later load is a sub-second safetensors read.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
from pathlib import Path

from neuroomics_bridge.errors import CorruptFileError
from neuroomics_bridge.io import atomic_directory, cache_root, file_sha256
from neuroomics_bridge.progress import quiet_transformers_progress

__all__ = ["gguf_cache_dir", "convert_gguf"]

logger = logging.getLogger(__name__)


def gguf_cache_dir(digest: str) -> Path:
    """Where the de-quantised copy of the GGUF with SHA-256 ``digest`` lives."""
    return cache_root() / "gguf" / digest


def convert_gguf(gguf_file: str | os.PathLike[str], *, digest: str | None = None) -> Path:
    """Return a safetensors directory equivalent to ``gguf_file``, converting it if needed.

    The conversion writes into a temporary directory renamed into place, so an interrupted
    conversion leaves no partial cache behind.

    Parameters
    ----------
    gguf_file
        The ``.gguf`` model file.
    digest
        Its SHA-256; skips re-hashing when the caller already verified the file.

    Returns
    -------
    Path
        The cached Hugging Face directory (:func:`gguf_cache_dir`).

    Raises
    ------
    CorruptFileError
        When transformers cannot read the file as a GGUF model.
    """
    source = Path(gguf_file)
    digest = digest or file_sha256(source)
    target = gguf_cache_dir(digest)
    if (target / "config.json").is_file():
        return target
    logger.info("De-quantising %s once into %s", source.name, target)
    model, tokenizer = _load_gguf(source)
    with atomic_directory(target, kind="converted model", marker="config.json") as tmp, quiet_transformers_progress():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def _load_gguf(source: Path):  # -> tuple[PreTrainedModel, PreTrainedTokenizerBase]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        # transformers' GGUF converter draws a plain tqdm bar: off the terminal, it goes nowhere.
        bar_sink = contextlib.redirect_stderr(io.StringIO()) if not sys.stderr.isatty() else contextlib.nullcontext()
        with quiet_transformers_progress(), bar_sink:
            model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
    except (ValueError, OSError, KeyError, IndexError, EOFError, struct.error) as err:
        raise CorruptFileError(f"{source}: could not be read as a GGUF model ({type(err).__name__}: {err})") from None
    # The de-quantised tensors are plain float32: drop the GGUF marker so the saved copy reloads
    # as an ordinary checkpoint.
    model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer
