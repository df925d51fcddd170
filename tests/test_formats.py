import gzip
import struct

import numpy as np
import pytest

from genood.data import formats


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    formats.write_idx(tmp_path / "a-idx3-ubyte", images)
    assert np.array_equal(formats.read_idx(tmp_path / "a-idx3-ubyte"), images)
    with gzip.open(tmp_path / "b.gz", "wb") as fh:
        fh.write(_idx_bytes(images))
    assert np.array_equal(formats.read_idx(tmp_path / "b.gz"), images)
    labels = np.arange(7, dtype=np.uint8)
    (tmp_path / "l").write_bytes(_idx_bytes(labels))
    assert formats.read_idx(tmp_path / "l").tolist() == list(range(7))


def test_idx_header_is_parsed_big_endian(tmp_path):
    # 300 = 0x012C: a little-endian reader would see a different shape
    images = np.zeros((1, 300, 2), dtype=np.uint8)
    images[0, 299, 1] = 9
    (tmp_path / "x").write_bytes(_idx_bytes(images))
    out = formats.read_idx(tmp_path / "x")
    assert out.shape == (1, 300, 2) and out[0, 299, 1] == 9


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(formats.FormatError, match="magic"):
        formats.read_idx(tmp_path / "bad")
    good = _idx_bytes(np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "short").write_bytes(good[:-3])
    with pytest.raises(formats.FormatError, match="promises"):
        formats.read_idx(tmp_path / "short")


def test_npz_shapes_and_labels(tmp_path):
    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(tmp_path / "g.npz", images=imgs, labels=np.array([3, 4]))
    out, labels = formats.read_npz(tmp_path / "g.npz")
    assert out.shape == (2, 4, 4, 1) and labels.tolist() == [3, 4]
    rgb = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=rgb)
    out, labels = formats.read_npz(tmp_path / "c.npz")
    assert out.shape == (3, 4, 4, 3) and labels is None


@pytest.mark.parametrize("kwargs, message", [
    ({"pictures": np.zeros((1, 2, 2), np.uint8)}, "no 'images'"),
    ({"images": np.zeros((1, 2, 2), np.float32)}, "uint8"),
    ({"images": np.zeros((1, 2, 2, 5), np.uint8)}, "shape"),
    ({"images": np.zeros((2, 2, 2), np.uint8), "labels": np.zeros(3)}, "labels"),
])
def test_npz_errors(tmp_path, kwargs, message):
    np.savez(tmp_path / "bad.npz", **kwargs)
    with pytest.raises(formats.FormatError, match=message):
        formats.read_npz(tmp_path / "bad.npz")
