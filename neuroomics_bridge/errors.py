"""One exception family, so callers can catch everything the library raises on purpose.

Every message names the file or key at fault, what was expected and what was found, in the
spirit of anndata's "`obsm['X_pca']` had shape (a, b) while it should have had (n_obs, ...)".
"""

from __future__ import annotations

__all__ = [
    "NobError",
    "ConfigError",
    "ModelNotFoundError",
    "InvalidModelError",
    "CorruptFileError",
    "MissingFileError",
    "DataError",
]


class NobError(ValueError):
    """Base class of every error neuroomics-bridge raises deliberately."""


class ConfigError(NobError):
    """A config or model card has an unknown key, a missing key or a value of the wrong kind."""


class ModelNotFoundError(NobError):
    """A backbone name is unknown, or its weights are not on this machine."""


class InvalidModelError(NobError):
    """A directory or file given as a model is not one (missing files, remote code requested)."""


class CorruptFileError(NobError):
    """A file exists but cannot be read: truncated, wrong format, or failed integrity check."""


class MissingFileError(NobError, FileNotFoundError):
    """A file or folder the caller named does not exist (also a ``FileNotFoundError``)."""


class DataError(NobError):
    """Input data (arrays, AnnData, images, tables) has the wrong shape, type or values."""
