"""Crash-safe storage of array artifacts, so interrupted runs resume where they stopped.

Every artifact is one ``.npz`` file written to a temporary name and renamed into place,
so a file that exists is complete. `cached_arrays` computes an artifact only when its
file is missing. A file that exists but cannot be read raises `CorruptArtifactError`
naming the file, rather than being recomputed behind the user's back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class CorruptArtifactError(RuntimeError):
    """A stored artifact exists but cannot be read."""


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write `arrays` to `path` (``.npz``) atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # The .npz layout of np.savez, written member by member: np.savez takes the keys as
        # keyword arguments, which would clash with its own parameters ("file", "allow_pickle").
        with os.fdopen(handle, "wb") as file, zipfile.ZipFile(file, "w") as archive:
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` artifact into memory.

    Raises:
        FileNotFoundError: `path` does not exist.
        CorruptArtifactError: the file exists but is not a readable ``.npz``.
    """
    path = Path(path)
    try:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("the file is a single .npy array, not an .npz archive")
        with stored:
            return {key: stored[key] for key in stored.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise CorruptArtifactError(
            f"cannot read stored artifact {path} ({type(error).__name__}: {error}); delete the "
            "file and run again to recompute it"
        ) from error


def cached_arrays(path: str | Path, compute: Callable[[], Mapping[str, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
    """Load the artifact at `path`, or compute, store and return it when missing."""
    path = Path(path)
    if path.exists():
        log.debug("loading %s", path)
        return load_arrays(path)
    arrays = dict(compute())
    save_arrays(path, arrays)
    return {key: np.asarray(value) for key, value in arrays.items()}


def save_json(path: str | Path, payload: object) -> Path:
    """Write `payload` as indented JSON atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    os.replace(temporary, path)
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")
