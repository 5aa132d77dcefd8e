"""Crash-safe file writing and cheap integrity checks.

Anything the library writes goes to a temporary sibling first and is renamed into place, so a
killed process never leaves a half-written artifact where a good one used to be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from neuroomics_bridge.errors import CorruptFileError, DataError, MissingFileError, NobError

__all__ = [
    "check_writable",
    "check_replaceable",
    "cache_root",
    "atomic_path",
    "current_umask",
    "atomic_directory",
    "atomic_write_text",
    "save_figure",
    "file_sha256",
    "check_safetensors",
    "read_tensors",
]


def cache_root() -> Path:
    """The library's cache folder (honours ``XDG_CACHE_HOME`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("neuroomics-bridge"))


def current_umask() -> int:
    """The process's file-mode creation mask, read without changing it (Linux ``/proc``).

    Where ``/proc`` has no ``Umask:`` line it is read by setting and restoring it, which is
    momentarily process-wide.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], *, folder: bool = False) -> None:
    """:class:`DataError` unless ``path`` can be written as a file (or, with ``folder``, a folder).

    The commands call it before their long work, so that a wrong ``--out`` fails at once, not
    after minutes of encoding and generation. Missing parent folders are fine (the writers make
    them); a file where a folder must be, or a folder where the file must be, or no write
    permission on the nearest existing folder, is not.
    """
    target = Path(path)
    if target.exists() and target.is_dir() != folder:
        raise DataError(
            f"{target}: a {'file' if folder else 'folder'}; expected a {'folder' if folder else 'file'} to write"
        )
    parent = next(p for p in (target.parent, *target.parent.parents) if p.exists())
    if not parent.is_dir():
        raise DataError(f"{parent}: a file, so {target} cannot be written beneath it")
    if not os.access(parent, os.W_OK | os.X_OK):  # the writers make a temporary beside it, then rename
        raise DataError(f"{target}: {parent} is not writable by this user")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its previous content. The
    new file gets the mode a plain ``open(path, "w")`` would leave: an existing file's own mode,
    else the umask's.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            _plain_modes(tmp, like=target)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, kind: str, marker: str) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path`` as a whole.

    An existing ``path`` is moved aside and deleted only after the new one is in place, so at
    every instant either the old or the new directory is complete. Only an empty folder or one
    written before as the same ``kind`` (it holds ``marker``) is replaced: a folder of the
    user's own files is refused with a :class:`DataError` before anything is written.

    Parameters
    ----------
    path
        The folder to write.
    kind, marker
        What the folder holds (for the error) and a file or folder every such folder has.
    """
    target = Path(path)
    check_replaceable(target, kind=kind, marker=marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _plain_modes(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
            try:
                os.replace(tmp, target)
            except BaseException:  # an interrupt or an OS error between the two renames: the old one back
                os.replace(old / target.name, target)
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_replaceable(path: str | os.PathLike[str], *, kind: str, marker: str) -> None:
    """:class:`DataError` unless :func:`atomic_directory` may write ``path`` with ``kind`` and
    ``marker``: a new or empty folder, or a saved ``kind``, in a writable place. Commands call it
    before their long work too, so a wrong folder fails at once."""
    target = Path(path)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / marker).exists())):
        found = "a file" if not target.is_dir() else f"a folder of other files (no {marker})"
        raise DataError(f"{target}: expected a new or empty folder or a saved {kind}, found {found}; not replaced")
    check_writable(target, folder=True)


def _plain_modes(path: Path, like: Path | None = None) -> None:
    """Give ``path`` (and everything under a folder) the mode a plain ``open()`` / ``mkdir()``
    would: temporary files and folders start private (0600 / 0700), and some writers (safetensors)
    keep that mode, so colleagues sharing a folder could not read what the library wrote. A file
    that replaces an existing file ``like`` takes its mode instead, as ``open(like, "w")`` keeps
    it (a file restricted to its owner stays so)."""
    if like is not None and path.is_file() and like.is_file() and not like.is_symlink():
        path.chmod(stat.S_IMODE(like.stat().st_mode))
        return
    umask = current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~umask)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(figure: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Lay out a matplotlib ``Figure`` and write it as a PNG at ``path``, atomically (a failed
    save leaves an earlier plot at ``path`` whole); returns ``path``."""
    figure.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return target


def unreadable_table(file: str | os.PathLike[str], reason: Exception | str) -> DataError:
    """The :class:`DataError` for a table pandas or pyarrow could not read (not UTF-8, ragged rows,
    a damaged file), naming the file and the reason: the reader's own error, or the caller's words."""
    said = f"{type(reason).__name__}: {reason}" if isinstance(reason, Exception) else reason
    return DataError(f"{file}: not a readable table ({said[:200]})")


def damaged_safetensors(file: str | os.PathLike[str], error: Exception) -> CorruptFileError:
    """The :class:`CorruptFileError` for a safetensors file whose byte ranges do not fit the shapes
    its header gives (what safetensors' own loader finds), naming the file."""
    return CorruptFileError(f"{file}: damaged safetensors file ({error})")


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file, streamed.

    Raises
    ------
    DataError
        For a line that is not a JSON object, naming ``file:line``, or a file that is not UTF-8.
    """
    with open(path, encoding="utf-8") as handle:
        lines = enumerate(handle, start=1)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not UTF-8 text ({err})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def file_sha256(path: str | os.PathLike[str], *, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks so large weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """Raise unless ``path`` is a complete safetensors file.

    Reads only the header: a safetensors file is an 8-byte header length, a JSON header giving
    each tensor's byte range, then the data, so its exact expected size is known up front and a
    truncated download is caught before any tensor is touched.

    Raises
    ------
    CorruptFileError
        When the header is truncated or not JSON, or the file size differs from what it implies.
    """
    file = Path(path)
    size = file.stat().st_size
    with open(file, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"{file}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise CorruptFileError(f"{file}: safetensors header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"{file}: safetensors header is not valid JSON ({err})") from None
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):  # not {name: {"data_offsets": [a, b]}}
        raise CorruptFileError(f"{file}: safetensors header does not give each tensor's data_offsets") from None
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        raise CorruptFileError(
            f"{file}: expected {expected} bytes from its safetensors header, found {size} "
            "(truncated or corrupted download?)"
        )


def read_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The torch tensors of a safetensors file (weights the library saved), on the CPU.

    Raises
    ------
    CorruptFileError
        When the file is damaged (see :func:`check_safetensors`), or its byte ranges do not fit
        the shapes its header gives; the message names it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(path)
    except SafetensorError as err:
        raise damaged_safetensors(path, err) from None


def write_arrays(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
    """Save numpy arrays and JSON-able metadata in one safetensors file, atomically.

    The format can hold nothing executable, unlike a pickle, so loading a file a colleague sent
    cannot run code.

    Parameters
    ----------
    path
        The ``.safetensors`` file to write.
    arrays
        Name -> array, stored as tensors.
    metadata
        Name -> JSON-able value, stored JSON-encoded in the header.
    """
    from safetensors.numpy import save_file

    header = {key: json.dumps(value) for key, value in metadata.items()}
    tensors = {key: np.ascontiguousarray(value) for key, value in arrays.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header)


def read_arrays(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`write_arrays`: read the arrays and the decoded metadata of a safetensors file.

    Returns
    -------
    arrays : dict
        Name -> numpy array.
    metadata : dict
        Name -> JSON-decoded header value.

    Raises
    ------
    MissingFileError
        When there is no such file.
    CorruptFileError
        When the file is damaged (see :func:`check_safetensors`) or its metadata is not JSON; the
        message names it.
    """
    from safetensors import SafetensorError, safe_open

    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"{file}: no such file")
    check_safetensors(file)
    try:
        with safe_open(file, framework="numpy") as handle:
            header = handle.metadata() or {}
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except SafetensorError as err:  # e.g. byte ranges that do not fit the shapes
        raise CorruptFileError(f"{file}: damaged safetensors file ({err})") from None
    try:
        metadata = {key: json.loads(value) for key, value in header.items()}
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{file}: metadata is not valid JSON ({err})") from None
    return arrays, metadata


def read_manifest(
    file: str | os.PathLike[str], expected_format: str, *, error: type[NobError] = CorruptFileError
) -> dict[str, Any]:
    """The JSON manifest of a saved folder, checked to be of ``expected_format``.

    Parameters
    ----------
    file
        The manifest (``config.json``, ``manifest.json``, ``cohort.json`` ...).
    expected_format
        The ``"format"`` value it must hold (``neuroomics-bridge/<kind>-v<N>``).
    error
        Raised, naming the file, when it is missing, not JSON, or of another format:
        :class:`CorruptFileError` for folders the library writes, :class:`DataError` for folders
        users assemble by hand.

    Returns
    -------
    dict
        The parsed manifest.

    Raises
    ------
    MissingFileError
        When ``file`` does not exist.
    """
    path = Path(file)
    if not path.is_file():
        raise MissingFileError(f"{path}: missing; expected a {expected_format!r} manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != expected_format:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise error(f"{path}: expected format {expected_format!r}, got {found!r}")
    return manifest
