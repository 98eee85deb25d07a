"""Data pipeline: embedded datasets, scaling, augmentation, resumable shuffling, sharding, local files."""

import json
import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from configs.default import get_default_configs
from score_sde import data

from helpers import write_cifar_files


def make_config(**data_fields):
    config = get_default_configs()
    for k, v in data_fields.items():
        setattr(config.data, k, v)
    return config


def take(it, n):
    return [next(it) for _ in range(n)]


# --- digits --------------------------------------------------------------------------------
def test_digits_shape_range_and_levels():
    it = data.get_dataset(make_config(), "train")
    x = next(it)
    assert x.shape == (128, 8, 8, 1) and x.dtype == np.float32
    assert (it.data_shape, it.num_examples, it.num_levels) == ((8, 8, 1), 1497, 17)
    assert x.min() == -1.0 and x.max() == 1.0
    k = data.inverse_scale(x, 17, centered=True)
    np.testing.assert_array_equal(data.scale(k, 17, centered=True), x)  # values lie on the 17-level grid
    x01 = next(data.get_dataset(make_config(centered=False), "test"))
    assert 0.0 <= x01.min() and x01.max() <= 1.0
    assert data.get_dataset(make_config(), "test").num_examples == 300


def test_digits_split_fixed_disjoint_and_complete():
    """The split ignores config.seed, and train + test is exactly load_digits as a multiset of rows."""
    a = data.load_split(make_config(), "train").source.array
    b = data.load_split(make_config(), "test").source.array
    config = make_config()
    config.seed = 7
    np.testing.assert_array_equal(data.load_split(config, "test").source.array, b)
    assert a.shape == (1497, 8, 8, 1) and b.shape == (300, 8, 8, 1)
    rows = lambda m: sorted(map(bytes, m.reshape(len(m), -1).astype(np.uint8)))  # noqa: E731
    assert rows(np.concatenate([a, b])) == rows(load_digits().images)


# --- scaling --------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("centered", [True, False])
def test_scaling_round_trip_is_exact(levels, centered):
    k = np.arange(levels)
    x = data.scale(k, levels, centered)
    assert x[0] == (-1.0 if centered else 0.0) and x[-1] == 1.0
    np.testing.assert_array_equal(data.inverse_scale(x, levels, centered), k)
    for u in (0.0, 0.5, np.nextafter(1.0, 0.0)):  # the bin edges are the hard cases
        xd = data.dequantize(k, np.full(levels, u), levels, centered)
        np.testing.assert_array_equal(data.inverse_scale(xd, levels, centered, dequantized=True), k)


@pytest.mark.parametrize("levels", [17, 256])
@pytest.mark.parametrize("centered", [True, False])
def test_dequantize_is_inside_the_exact_bin_for_random_noise(levels, centered):
    """Exact float64 bin edges; u includes values within 1 ulp of 0 and 1, where float32 rounds."""
    rng = np.random.default_rng(3)
    k = rng.integers(0, levels, 20_000)
    u = np.concatenate([rng.random(19_000), np.full(500, np.nextafter(1.0, 0.0)), np.full(500, 1e-30)])
    x = data.dequantize(k, u, levels, centered).astype(np.float64)
    edge = lambda j: 2.0 * (j / levels) - 1.0 if centered else j / levels  # noqa: E731
    assert np.all(x >= edge(k)) and np.all(x < edge(k + 1))
    np.testing.assert_array_equal(data.inverse_scale(x.astype(np.float32), levels, centered, dequantized=True), k)


def test_dequantization_stays_in_each_levels_bin():
    """x = (k + u) / 17 with u ~ U[0, 1): x in [k/17, (k+1)/17), and u has mean 1/2 (+-0.02, ~6 se)."""
    plain = next(data.get_dataset(make_config(centered=False), "train"))
    deq = next(data.get_dataset(make_config(centered=False, uniform_dequantization=True), "train"))
    k = data.inverse_scale(plain, 17, centered=False).astype(np.float64)
    d = deq.astype(np.float64)
    assert np.all(d >= k / 17) and np.all(d < (k + 1) / 17)
    u = d * 17 - k
    assert abs(u.mean() - 0.5) < 0.02 and u.std() > 0.25  # U[0, 1) std 0.289
    centered = next(data.get_dataset(make_config(uniform_dequantization=True), "train"))
    np.testing.assert_array_equal(data.inverse_scale(centered, 17, True, dequantized=True), k)


def test_bits_per_dim_offset():
    assert data.bits_per_dim_offset(256, centered=True) == 7.0
    assert data.bits_per_dim_offset(256, centered=False) == 8.0


def test_pipeline_and_jax_dequantisation_are_one_rule():
    """The numpy pipeline (data.dequantize, data.scale) and the jax functions (bpd.uniform_dequantize
    under jit, bpd.scale_levels) are the same implementation: for equal noise, equal float32 values up
    to one rounding (XLA may fuse the multiply-add; atol 1.2e-7 on [-1, 1]) and the same levels."""
    import jax
    import jax.numpy as jnp

    from score_sde import bpd

    k = np.random.default_rng(0).integers(0, 17, (64, 8, 8, 1)).astype(np.uint8)
    key = jax.random.key(0)
    u = np.asarray(jax.random.uniform(key, k.shape, jnp.float32))  # the noise uniform_dequantize draws
    want = data.dequantize(k, u, 17, centered=True)
    assert isinstance(want, np.ndarray) and want.dtype == np.float32
    got = jax.jit(lambda key, k: bpd.uniform_dequantize(key, k, 17, (-1.0, 1.0)))(key, k)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1.2e-7)
    np.testing.assert_array_equal(data.inverse_scale(np.asarray(got), 17, True, dequantized=True), k)
    np.testing.assert_array_equal(np.asarray(bpd.scale_levels(jnp.asarray(k), 17, (-1.0, 1.0))),
                                  data.scale(k, 17, centered=True))


def test_bits_per_dim_of_continuous_data_has_no_offset():
    """num_levels=None (toy data, what --mode=likelihood passes for it): bpd = -logp / (D ln 2)."""
    import math

    from score_sde import bpd

    np.testing.assert_allclose(bpd.bits_per_dim(np.array([-2 * math.log(2.0), 0.0]), (2,), num_levels=None),
                               [1.0, 0.0], rtol=1e-6)


# --- augmentation ---------------------------------------------------------------------------
def test_random_flip_flips_horizontally_only_and_only_in_train():
    base = next(data.get_dataset(make_config(), "train"))
    flipped = next(data.get_dataset(make_config(random_flip=True), "train"))
    same = np.all(flipped == base, axis=(1, 2, 3))
    mirrored = np.all(flipped == base[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)  # every example is itself or its left-right mirror
    n_flipped = np.sum(mirrored & ~same)
    assert 30 < n_flipped < 98  # Binomial(128, 1/2) (minus symmetric images): mean 64, sd 5.7
    test_plain = next(data.get_dataset(make_config(), "test"))
    np.testing.assert_array_equal(next(data.get_dataset(make_config(random_flip=True), "test")), test_plain)


# --- order, state, sharding -----------------------------------------------------------------
def test_iterator_reproducible_by_seed_and_reshuffled_each_epoch():
    a, b = take(data.get_dataset(make_config(), "train", batch_size=1497), 2)  # one batch = one epoch
    a2, b2 = take(data.get_dataset(make_config(), "train", batch_size=1497), 2)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    assert not np.array_equal(a, b)  # epoch 2 is a different order ...
    key = lambda m: np.sort(m.reshape(len(m), -1), axis=0)  # noqa: E731
    np.testing.assert_array_equal(key(a), key(b))  # ... of the same examples
    config = make_config()
    config.seed = 1
    assert not np.array_equal(next(data.get_dataset(config, "train", batch_size=1497)), a)


def test_batch_larger_than_the_split_spans_epochs():
    """A 700-example batch of the 300 test digits holds epochs 0, 1 and 100 examples of epoch 2."""
    it = data.get_dataset(make_config(), "test", batch_size=700)
    x = next(it).reshape(700, -1)
    key = lambda m: np.sort(m, axis=0)  # noqa: E731
    np.testing.assert_array_equal(key(x[:300]), key(x[300:600]))
    assert it.get_state() == {"epoch": 2, "index": 100}


def test_get_state_set_state_resumes_identically():
    """Batches of 500 cross epoch boundaries (1497 examples); augmentation on."""
    config = make_config(random_flip=True, uniform_dequantization=True)
    it = data.get_dataset(config, "train", batch_size=500)
    take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 4)
    resumed = data.get_dataset(config, "train", batch_size=500)
    resumed.set_state(state)
    for x, y in zip(expected, take(resumed, 4)):
        np.testing.assert_array_equal(x, y)
    assert resumed.get_state() == it.get_state() == {"epoch": 2, "index": 6}  # 3000 = 2 * 1497 + 6
    with pytest.raises(ValueError, match="index"):
        resumed.set_state({"epoch": 0, "index": 1497})


def test_process_shards_concatenate_to_the_global_batch():
    config = make_config(random_flip=True, uniform_dequantization=True)
    whole = data.get_dataset(config, "train", batch_size=700)
    shards = [data.get_dataset(config, "train", p, 2, batch_size=700) for p in range(2)]
    assert shards[0].batch_size == 350
    for _ in range(3):  # the third global batch straddles epochs 0 and 1
        np.testing.assert_array_equal(np.concatenate([next(s) for s in shards]), next(whole))
    assert shards[0].get_state() == shards[1].get_state() == whole.get_state()


def test_shard_for_devices():
    batch = np.arange(12.0).reshape(6, 2)
    out = data.shard_for_devices(batch, 2)
    assert out.shape == (2, 3, 2)
    np.testing.assert_array_equal(out.reshape(6, 2), batch)
    x, mask = data.shard_for_devices(data.pad_batch(batch, 8), 2)
    assert x.shape == (2, 4, 2) and mask.sum() == 6
    with pytest.raises(ValueError, match="6 examples is not divisible by 4 devices"):
        data.shard_for_devices(batch, 4)


def test_iterate_once_visits_the_test_split_once():
    config = make_config()
    batches = list(data.iterate_once(config, "test", batch_size=128))
    assert [len(b) for b in batches] == [128, 128, 44]  # the last batch is the smaller remainder
    expected = data.scale(data.load_split(config, "test").source.array, 17, True)
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    parts = [list(data.get_dataset(config, "test", p, 2, batch_size=128, repeat=False)) for p in range(2)]
    assert [len(b) for b in parts[0]] == [64, 64, 22]
    for b, p0, p1 in zip(batches, *parts):
        np.testing.assert_array_equal(np.concatenate([p0, p1]), b)
    x, mask = data.pad_batch(batches[-1], 128)
    assert x.shape == (128, 8, 8, 1) and mask.sum() == 44 and not x[44:].any()


# --- toy 2-D --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["toy_gmm", "checkerboard", "moons", "swiss_roll"])
def test_toy_datasets(name):
    it = data.get_dataset(make_config(dataset=name), "train")
    x = next(it)
    assert x.shape == (128, 2) and x.dtype == np.float32 and it.num_levels is None
    assert it.num_examples == 50_000 and data.get_dataset(make_config(dataset=name), "test").num_examples == 5_000
    assert np.all(np.abs(x) < 6)


def test_toy_gmm_matches_its_published_parameters():
    """Squared distance to the nearest mode / s^2 is chi^2_2 (mean 2, se 0.009 at 50k; tol 0.05)."""
    x = data.load_split(make_config(dataset="toy_gmm"), "train").source.array.astype(np.float64)
    weights, means, stds = data.toy_gmm_params()
    d2 = np.min(np.sum((x[:, None] - means[None]) ** 2, axis=-1), axis=1) / stds[0] ** 2
    assert abs(d2.mean() - 2.0) < 0.05
    counts = np.bincount(np.argmin(np.sum((x[:, None] - means[None]) ** 2, axis=-1), axis=1), minlength=8)
    assert np.all(np.abs(counts / len(x) - weights) < 0.01)  # binomial se 0.0015
    mixture = data.toy_gmm_mixture()
    np.testing.assert_allclose(np.asarray(mixture.means), means, rtol=1e-6)


# --- local files ------------------------------------------------------------------------------
def write_cifar(root, n_train=4, n_test=3, extracted=False):
    """Writes a tiny archive in the real cifar-10-python format; returns {split: (N, 32, 32, 3) uint8}."""
    rng = np.random.default_rng(0)
    files, images = {}, {"train": [], "test": []}
    for name, split, n in [(f"data_batch_{i}", "train", n_train) for i in range(1, 6)] + [("test_batch", "test", n_test)]:
        flat = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        files[name] = pickle.dumps({b"data": flat, b"labels": list(range(n)), b"batch_label": name.encode()})
        images[split].append(flat.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    write_cifar_files(root, files, extracted)
    return {k: np.concatenate(v) for k, v in images.items()}


def cifar_config(data_dir):
    return make_config(dataset="cifar10", data_dir=str(data_dir), image_size=32, num_channels=3, num_levels=256)


@pytest.mark.parametrize("extracted", [False, True])
def test_cifar10_from_local_archive(tmp_path, extracted):
    images = write_cifar(tmp_path, extracted=extracted)
    config = cifar_config(tmp_path)
    it = data.get_dataset(config, "train", batch_size=4)
    assert (it.num_examples, it.data_shape, it.num_levels) == (20, (32, 32, 3), 256)
    assert next(it).shape == (4, 32, 32, 3)
    test = np.concatenate(list(data.iterate_once(config, "test", batch_size=2)))
    np.testing.assert_array_equal(data.inverse_scale(test, 256, True), images["test"])  # HWC from CHW rows


def test_cifar10_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.get_dataset(cifar_config(tmp_path), "train")
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in msg and "nothing is downloaded" in msg


def test_image_folder_resizes_and_center_crops(tmp_path):
    """16x8 images: red | green | blue columns (4, 8, 4 wide); the center 8x8 crop is all green."""
    strip = np.zeros((8, 16, 3), np.uint8)
    strip[:, :4, 0] = strip[:, 4:12, 1] = strip[:, 12:, 2] = 255
    for i in range(10):
        folder = tmp_path / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(strip).save(folder / f"img{i}.png")
        Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(folder / f"big{i}.PNG")  # resized 24 -> 8
    config = make_config(dataset="image_folder", data_dir=str(tmp_path), image_size=8, num_channels=3,
                         num_levels=256, test_fraction=0.2)
    it = data.get_dataset(config, "train", batch_size=16)
    assert (it.num_examples, it.data_shape) == (16, (8, 8, 3))
    assert data.get_dataset(config, "test", batch_size=4).num_examples == 4
    k = data.inverse_scale(np.concatenate(take(it, 1)), 256, True).reshape(16, -1, 3)
    green = np.all(k == [0, 255, 0], axis=(1, 2))
    grey = np.all(k == 128, axis=(1, 2))
    assert np.all(green | grey) and green.any() and grey.any()
    config.data.num_channels = 1
    assert next(data.get_dataset(config, "train", batch_size=2)).shape == (2, 8, 8, 1)


def test_image_folder_uses_train_and_test_subfolders(tmp_path):
    for split, n in [("train", 3), ("test", 2)]:
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / split / f"{i}.jpg")
    config = make_config(dataset="image_folder", data_dir=str(tmp_path), image_size=4, num_channels=1, num_levels=256)
    assert data.get_dataset(config, "train", batch_size=1).num_examples == 3
    assert data.get_dataset(config, "test", batch_size=1).num_examples == 2


def test_tfds_data_source_path_with_a_stand_in_module(tmp_path, monkeypatch):
    """The adapter around tfds.data_source (TFDS itself is optional and not installed in CI)."""
    images = [np.full((10, 12, 3), i, np.uint8) for i in range(6)]
    calls = []

    def data_source(name, split, data_dir, download):
        calls.append((name, split, data_dir, download))
        return [{"image": im} for im in images]

    builder = lambda name, data_dir: types.SimpleNamespace(info=types.SimpleNamespace(splits={"train": 0}))  # noqa: E731
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source, builder=builder))
    (tmp_path / "lsun").mkdir()
    config = make_config(dataset="lsun/church_outdoor", data_dir=str(tmp_path), image_size=8, num_channels=3,
                         num_levels=256)
    x = np.concatenate(list(data.iterate_once(config, "test", batch_size=4)))
    assert x.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(data.inverse_scale(x, 256, True)[:, 0, 0, 0], np.arange(6))
    assert calls == [("lsun/church_outdoor", "validation", str(tmp_path), False)]  # LSUN has no test split
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        data.get_dataset(make_config(dataset="celeb_a", data_dir=str(tmp_path), image_size=8, num_channels=3,
                                     num_levels=256))


# --- user errors ------------------------------------------------------------------------------
def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'fashion_mnist'.*cifar10.*digits.*image_folder.*toy_gmm"):
        data.get_dataset(make_config(dataset="fashion_mnist"))


def test_indivisible_global_batch_names_both_numbers():
    with pytest.raises(ValueError, match="global batch size 10 is not divisible by the process count 3"):
        data.get_dataset(make_config(), "train", 0, 3, batch_size=10)


def test_config_inconsistent_with_dataset():
    with pytest.raises(ValueError, match="num_levels=256"):
        data.get_dataset(make_config(num_levels=256))
    with pytest.raises(ValueError, match="image_size=8"):
        data.get_dataset(make_config(image_size=32))


@pytest.mark.parametrize("name, size", [("cifar10", 32), ("celeb_a", 16), ("lsun/church_outdoor", 16)])
def test_tfds_mock_data(tmp_path, name, size):
    """The real tfds.data_source path, TensorFlow-free, on tfds.testing.mock_data (TFDS is a dev dependency)."""
    import tensorflow_datasets as tfds
    (tmp_path / name.split("/")[0]).mkdir()
    config = make_config(dataset=name, data_dir=str(tmp_path), image_size=size, num_channels=3, num_levels=256)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        it = data.get_dataset(config, "train", batch_size=4)
        x = next(it)
        once = list(data.iterate_once(config, "test", batch_size=4))
    assert it.num_examples == 6 and x.shape == (4, size, size, 3) and -1 <= x.min() and x.max() <= 1
    assert [len(b) for b in once] == [4, 2]
