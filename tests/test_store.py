"""Tests for mexp_lib.store: atomic .npz and JSON artifacts and the compute-once cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mexp_lib.store import (
    CorruptArtifactError,
    cached_arrays,
    load_arrays,
    save_arrays,
    save_json,
)


class _Unconvertible:
    """An array-like whose conversion fails, to break a write halfway."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("conversion failed on purpose")


def _arrays() -> dict[str, np.ndarray]:
    return {
        "features": np.arange(12, dtype=np.float32).reshape(3, 4),
        "labels": np.array([2, 0, 1], dtype=np.int64),
        "mask": np.array([[True, False]]),
        "scalar": np.float64(0.25),
    }


# --------------------------------------------------------------------------- arrays


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "artifact.npz"

    returned = save_arrays(path, _arrays())
    loaded = load_arrays(path)

    assert returned == path
    assert sorted(loaded) == sorted(_arrays())
    for key, expected in _arrays().items():
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
        assert loaded[key].dtype == np.asarray(expected).dtype, key


def test_save_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "artifact.npz"

    save_arrays(path, {"x": np.ones(2)})

    assert path.is_file()


def test_save_leaves_no_temporary_file(tmp_path):
    save_arrays(tmp_path / "artifact.npz", _arrays())
    save_arrays(tmp_path / "artifact.npz", {"x": np.zeros(1)})

    assert [p.name for p in tmp_path.iterdir()] == ["artifact.npz"]
    assert list(load_arrays(tmp_path / "artifact.npz")) == ["x"]


def test_failed_save_keeps_old_file(tmp_path):
    path = tmp_path / "artifact.npz"
    save_arrays(path, {"x": np.arange(3)})

    with pytest.raises(RuntimeError, match="on purpose"):
        save_arrays(path, {"x": np.zeros(2), "y": _Unconvertible()})

    assert [p.name for p in tmp_path.iterdir()] == ["artifact.npz"]
    np.testing.assert_array_equal(load_arrays(path)["x"], np.arange(3))


@pytest.mark.parametrize("key", ["allow_pickle", "file"])
def test_save_reserved_key_round_trip(tmp_path, key):
    path = tmp_path / "artifact.npz"

    save_arrays(path, {key: np.arange(3)})

    np.testing.assert_array_equal(load_arrays(path)[key], np.arange(3))


def test_load_missing_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_arrays(tmp_path / "missing.npz")


@pytest.mark.parametrize(("case", "content"), [
    ("garbage", b"this is not a zip archive"),
    ("empty", b""),
    ("zip magic only", b"PK\x03\x04" + b"\x00" * 20),
])
def test_load_corrupt_raises(tmp_path, case, content):
    path = tmp_path / "artifact.npz"
    path.write_bytes(content)

    with pytest.raises(CorruptArtifactError, match=str(path)):
        load_arrays(path)


def test_load_truncated_raises(tmp_path):
    path = save_arrays(tmp_path / "artifact.npz", {"x": np.arange(1000)})
    path.write_bytes(path.read_bytes()[:-200])

    with pytest.raises(CorruptArtifactError, match=str(path)):
        load_arrays(path)


def test_load_npy_file_raises(tmp_path):
    path = tmp_path / "artifact.npz"
    with path.open("wb") as handle:
        np.save(handle, np.arange(3))

    with pytest.raises(CorruptArtifactError, match=str(path)):
        load_arrays(path)


# --------------------------------------------------------------------------- cache


def test_cached_arrays_computes_once(tmp_path):
    path = tmp_path / "cache" / "artifact.npz"
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(4), "y": np.eye(2)}

    first = cached_arrays(path, compute)
    second = cached_arrays(path, compute)

    assert len(calls) == 1
    assert path.is_file()
    for key in ("x", "y"):
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_cached_arrays_corrupt_not_recomputed(tmp_path):
    path = tmp_path / "artifact.npz"
    path.write_bytes(b"garbage")
    calls = []

    with pytest.raises(CorruptArtifactError, match=str(path)):
        cached_arrays(path, lambda: calls.append(1) or {"x": np.ones(1)})

    assert not calls
    assert path.read_bytes() == b"garbage"


def test_cached_arrays_failed_compute_writes_nothing(tmp_path):
    def compute():
        raise RuntimeError("compute failed on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        cached_arrays(tmp_path / "artifact.npz", compute)

    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- JSON


def test_save_json_round_trip(tmp_path):
    path = tmp_path / "out" / "result.json"
    payload = {"auc": np.float32(0.75), "count": np.int64(3), "tpr": np.array([0.1, 0.2])}

    save_json(path, payload)

    assert json.loads(path.read_text()) == {"auc": 0.75, "count": 3, "tpr": [0.1, 0.2]}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_save_json_unsupported_type_raises(tmp_path):
    with pytest.raises(TypeError, match="set"):
        save_json(tmp_path / "result.json", {"values": {1, 2}})
