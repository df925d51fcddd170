"""Derived OOD sets: every derivation against a direct computation on small arrays, class splits on real
data, names and one-sentence errors."""
from __future__ import annotations

import numpy as np
import pytest

from genood.data import derived
from genood.data.derived import blends, classes, shifts, synthetic
from genood.data.registry import UnknownDatasetError, canonical_name, load_split
from tests.conftest import needs_real_data

RNG = np.random.default_rng(0)
IMG = RNG.integers(0, 256, (3, 4, 6, 1), dtype=np.uint8)     # N, H, W, C with H != W
SQ = RNG.integers(0, 256, (5, 4, 4, 2), dtype=np.uint8)


def rng():
    return np.random.default_rng(1)


def test_flips_rotation_inversion_by_index():
    n, h, w, c = IMG.shape
    hf, _ = shifts.hflip(IMG, None, None, rng())
    vf, _ = shifts.vflip(IMG, None, None, rng())
    inv, _ = shifts.invert(IMG, None, None, rng())
    for i in range(n):
        for y in range(h):
            for x in range(w):
                assert hf[i, y, x, 0] == IMG[i, y, w - 1 - x, 0]
                assert vf[i, y, x, 0] == IMG[i, h - 1 - y, x, 0]
                assert inv[i, y, x, 0] == 255 - int(IMG[i, y, x, 0])
    r1, _ = shifts.rot90(SQ, None, 1, rng())
    s = SQ.shape[1]
    for y in range(s):
        for x in range(s):  # counter-clockwise: new[y, x] = old[x, s-1-y]
            assert np.array_equal(r1[:, y, x], SQ[:, x, s - 1 - y])
    r2, _ = shifts.rot90(SQ, None, 2, rng())
    assert np.array_equal(r2, SQ[:, ::-1, ::-1])


def test_gamma_contrast_noise_by_formula():
    g, _ = shifts.gamma(IMG, None, 2.0, rng())
    assert np.array_equal(g, np.clip(np.rint(255 * (IMG / 255.0) ** 2), 0, 255).astype(np.uint8))
    c, _ = shifts.contrast(IMG, None, 0.5, rng())
    for i in range(len(IMG)):
        m = IMG[i].astype(float).mean()
        assert np.array_equal(c[i], np.clip(np.rint(m + 0.5 * (IMG[i] - m)), 0, 255).astype(np.uint8))
    z, _ = shifts.noise(IMG, None, 8.0, rng())
    expect = np.clip(np.rint(IMG + np.random.default_rng(1).normal(0, 8.0, IMG.shape)), 0, 255).astype(np.uint8)
    assert np.array_equal(z, expect)


def test_blur_against_an_explicit_kernel():
    x = np.zeros((1, 9, 9, 1), dtype=np.uint8)
    x[0, 4, 4, 0] = 255
    b, _ = shifts.blur(x, None, 1.0, rng())
    k = np.exp(-0.5 * np.arange(-4, 5) ** 2)  # truncate=4 sigma: the whole 9x9 window
    k /= k.sum()
    assert np.array_equal(b[0, :, :, 0], np.clip(np.rint(255 * np.outer(k, k)), 0, 255).astype(np.uint8))


def test_resample_is_block_means_repeated():
    out, _ = shifts.resample(SQ, None, 2, rng())
    for i in range(len(SQ)):
        for by in range(2):
            for bx in range(2):
                block = SQ[i, 2 * by:2 * by + 2, 2 * bx:2 * bx + 2].astype(float)
                want = np.clip(np.rint(block.mean(axis=(0, 1))), 0, 255)
                assert np.array_equal(out[i, 2 * by:2 * by + 2, 2 * bx:2 * bx + 2], np.broadcast_to(want, (2, 2, 2)))
    with pytest.raises(derived.DerivationError, match="divides"):
        shifts.resample(SQ, None, 3, rng())


def test_block_shuffle_keeps_each_block_multiset_and_permute_is_one_fixed_order():
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    out, _ = shifts.shuffle(x, None, 2, rng())
    assert not np.array_equal(out, x)
    for i in range(2):
        for by in range(2):
            for bx in range(2):
                a = np.sort(x[i, 2 * by:2 * by + 2, 2 * bx:2 * bx + 2].ravel())
                assert np.array_equal(np.sort(out[i, 2 * by:2 * by + 2, 2 * bx:2 * bx + 2].ravel()), a)
    p, _ = shifts.permute(x, None, None, rng())
    perm = np.random.default_rng(1).permutation(16)
    for i in range(2):
        assert np.array_equal(p[i].ravel(), x[i].ravel()[perm])


def test_synthetic_sets_by_their_definitions():
    base = RNG.integers(0, 256, (400, 8, 8, 1), dtype=np.uint8)
    u, labels = synthetic.uniform(base, None, None, rng())
    assert u.shape == base.shape and labels is None and u.dtype == np.uint8
    gs, _ = synthetic.gaussian(base, None, None, rng())
    want = np.clip(np.rint(np.random.default_rng(1).normal(base.mean(), base.std(), base.shape)), 0, 255).astype(np.uint8)
    assert np.array_equal(gs, want)
    b, _ = synthetic.bernoulli(base, None, None, rng())
    assert set(np.unique(b)) <= {0, 255} and abs(b.mean() - base.mean()) < 3
    c, _ = synthetic.constant(base, None, None, rng())
    assert all(len(np.unique(img)) == 1 for img in c)
    cb, _ = synthetic.checkerboard(base, None, 2, rng())
    for img in cb[:5, :, :, 0].astype(int):  # side 2: a shift by 2 flips the level, a shift by 4 keeps it
        assert len(np.unique(img)) == 2
        assert np.all(img[:, :-2] != img[:, 2:]) and np.all(img[:-2] != img[2:])
        assert np.all(img[:, :-4] == img[:, 4:]) and np.all(img[:-2, :-2] == img[2:, 2:])
    st, _ = synthetic.stripes(base, None, 3, rng())
    for img in st[:10, :, :, 0]:
        rows_const, cols_const = np.all(img == img[:, :1]), np.all(img == img[:1, :])
        assert rows_const or cols_const  # horizontal stripes are constant along rows, vertical along columns
    bl, _ = synthetic.blobs(base, None, 1.5, rng())
    assert bl.reshape(len(bl), -1).min(axis=1).max() == 0 and bl.reshape(len(bl), -1).max(axis=1).min() == 255


def test_blend_pairs_each_image_with_another():
    x = RNG.integers(0, 256, (7, 3, 3, 1), dtype=np.uint8)
    partner = blends.partners(7, rng())
    assert np.all(partner != np.arange(7)) and sorted(partner) == list(range(7))
    out, _ = blends.blend(x, None, 0.25, rng())
    assert np.array_equal(out, np.clip(np.rint(0.25 * x + 0.75 * x[partner].astype(float)), 0, 255).astype(np.uint8))
    one, _ = blends.blend(x, None, 1.0, rng())
    assert np.array_equal(one, x)


def test_class_filter_on_small_labels():
    labels = np.array([0, 1, 2, 1, 0, 3])
    imgs = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
    out, lab = classes.keep_classes(imgs, labels, (0, 3), rng())
    assert out.ravel().tolist() == [0, 4, 5] and lab.tolist() == [0, 0, 3]
    with pytest.raises(derived.DerivationError, match="do not occur"):
        classes.keep_classes(imgs, labels, (7,), rng())
    with pytest.raises(derived.DerivationError, match="no labels"):
        classes.keep_classes(imgs, None, (0,), rng())


def test_names_groups_severity_and_class_lists():
    assert derived.parse_class_list("0-2,7") == (0, 1, 2, 7)
    assert derived.group_of("fmnist:classes=5-9") == "near"
    assert derived.group_of("fmnist:hflip") == "transform" and derived.group_of("mnist:blend=0.5") == "transform"
    assert derived.group_of("fmnist:uniform") == "far" and derived.group_of("mnist") == "real"
    assert derived.severity("fmnist:noise=16") == ("fmnist:noise", 16.0)
    assert derived.severity("fmnist:classes=0-4:blur=2") == ("fmnist:classes=0-4:blur", 2.0)
    assert derived.severity("fmnist:hflip") is None
    assert canonical_name("Fashion-MNIST:hflip") == "fmnist:hflip"
    base, steps = derived.split_name("npz:/tmp/a:b.npz:invert")
    assert base == "npz:/tmp/a:b.npz" and [s.derivation.name for s in steps] == ["invert"]


@pytest.mark.parametrize("name, phrase", [
    ("fmnist:hflipp", "Unknown derivation 'hflipp'"),
    ("fmnist:classes=0-12", "classes 10, 11, 12 do not occur"),
    ("fmnist:classes=4-1", "needs a class list"),
    ("fmnist:blur", "needs a value"),
    ("fmnist:hflip=2", "takes no value"),
    ("fmnist:rot90=4", "out of range"),
    ("fmnist:noise=-1", "out of range"),
])
def test_bad_names_are_one_sentence(name, phrase):
    with pytest.raises(UnknownDatasetError) as err:
        load_split(name, "test")
    text = str(err.value)
    assert phrase in text and "\n" not in text and text.rstrip().endswith((".", ")"))


@needs_real_data
def test_class_splits_are_disjoint_with_the_stated_counts():
    full = load_split("fmnist", "test")
    a, b = load_split("fmnist:classes=0-4", "test"), load_split("fmnist:classes=5-9", "test")
    assert len(a) == len(b) == 5000 and len(load_split("fmnist:classes=0-4", "train")) == 30000
    assert set(np.unique(a.labels)) == set(range(5)) and set(np.unique(b.labels)) == set(range(5, 10))
    rows = lambda s: {r.tobytes() for r in s.images.reshape(len(s), -1)}
    assert not rows(a) & rows(b) and len(rows(a) | rows(b)) == len(rows(full))
    even, odd = load_split("mnist:classes=0,2,4,6,8", "test"), load_split("mnist:classes=1,3,5,7,9", "test")
    assert len(even) + len(odd) == len(load_split("mnist", "test"))
    assert a.files == full.files  # the parent's files: their checksums go into provenance


@needs_real_data
def test_derived_sets_are_deterministic_and_seeded_by_name_and_split():
    one, two = load_split("fmnist:noise=16", "test"), load_split("fmnist:noise=16", "test")
    assert np.array_equal(one.images, two.images)
    assert not np.array_equal(load_split("fmnist:noise=16", "test").images[:100],
                              load_split("fmnist:noise=17", "test").images[:100])
    chained = load_split("fmnist:classes=0-4:hflip", "test")
    assert np.array_equal(chained.images, load_split("fmnist:classes=0-4", "test").images[:, :, ::-1])
