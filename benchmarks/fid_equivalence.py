"""Equivalence of score_sde.metrics' FID Inception with pytorch-fid's forward pass (same weights).

torch is never a dependency of score_sde: run this with a separate environment that has torch and
pytorch-fid (nothing is downloaded: the network gets random weights, not the URL's):

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch torchvision pytorch-fid
    python benchmarks/fid_equivalence.py --torch-python /tmp/torchvenv/bin/python

Steps: (1) in the torch environment, pytorch-fid's `InceptionV3` is built with a random state
dict (its own key names and shapes), saved with `torch.save` in the zip and the legacy format,
and run on random uint8 images of several sizes (32: upsampled as CIFAR-10; 299: no resize;
347: downsampled); (2) here, both files are read without torch, their keys and shapes compared
with `expected_state_dict_shapes()`, and the Flax network's features and logits compared with
torch's (max |a - b| / max |b| and the largest elementwise relative difference); (3) files written
by `write_state_dict` are loaded back by `torch.load(weights_only=True)` and compared.

Without torch and without --torch-python the script prints a message and exits 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

SIZES = (32, 299, 347)
N_IMAGES = 4


# ---- torch side (runs in the torch environment; imports nothing from score_sde) ----------------

def _random_state_dict(torch, seed: int = 0):
    """pytorch-fid's key names and shapes (torchvision Inception-v3, 1008 classes, no aux), random values.

    Conv weights are He-normal and batch-norm statistics near (0, 1), so activations stay O(1)
    through the 94 layers and the comparison is not one of vanishing numbers.
    """
    import torchvision

    base = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in base.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = v.clone()
        elif k.endswith("conv.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / np.prod(v.shape[1:])) ** 0.5
        elif k == "fc.weight":
            sd[k] = torch.randn(v.shape, generator=g) / v.shape[1] ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            sd[k] = 0.5 + torch.rand(v.shape, generator=g)
        else:  # bn.bias, running_mean, fc.bias
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
    base.load_state_dict(sd)
    return base.state_dict()  # a module's own state dict, as the real file (with its `_metadata`)


def torch_side(out_dir: str) -> None:
    import torch
    import torch.nn.functional as F
    from pytorch_fid import inception as pfi

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sd = _random_state_dict(torch)
    pfi.load_state_dict_from_url = lambda *a, **k: sd  # the real class, our weights: no download
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    torch.save(sd, os.path.join(out_dir, "fid_zip.pth"))
    torch.save(sd, os.path.join(out_dir, "fid_legacy.pth"), _use_new_zipfile_serialization=False)
    rng = np.random.default_rng(1)
    out = {}
    for size in SIZES:
        images = rng.integers(0, 256, (N_IMAGES, size, size, 3), dtype=np.uint8)
        x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)  # as ToTensor()
        with torch.no_grad():
            pool = model(x)[0][:, :, 0, 0]
            logits = F.linear(pool, sd["fc.weight"], sd["fc.bias"])
        out[f"images_{size}"], out[f"pool_{size}"], out[f"logits_{size}"] = images, pool.numpy(), logits.numpy()
    np.savez(os.path.join(out_dir, "torch_outputs.npz"), **out)
    print(f"torch {torch.__version__}: pytorch-fid InceptionV3 with random weights, "
          f"{sum(v.numel() for k, v in sd.items() if 'num_batches' not in k)} parameters")


def torch_check(out_dir: str) -> None:
    """torch.load reads what score_sde's write_state_dict wrote, with the same values."""
    import torch

    ref = torch.load(os.path.join(out_dir, "fid_zip.pth"), weights_only=True)
    for name in ("roundtrip_zip.pth", "roundtrip_legacy.pth"):
        got = torch.load(os.path.join(out_dir, name), weights_only=True)
        keys = [k for k in ref if not k.endswith("num_batches_tracked")]
        assert set(got) == set(keys), (name, set(got) ^ set(keys))
        assert all(torch.equal(got[k], ref[k]) for k in keys), name
        print(f"torch.load({name}) (written by score_sde without torch): {len(got)} tensors identical")


# ---- score_sde side ---------------------------------------------------------------------------

def _rel(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norm = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    big = np.abs(b) > 1e-2 * np.max(np.abs(b))
    elem = float(np.max(np.abs(a - b)[big] / np.abs(b)[big]))
    return norm, elem


def compare(out_dir: str) -> float:
    from score_sde import metrics

    ref = np.load(os.path.join(out_dir, "torch_outputs.npz"))
    expected = metrics.expected_state_dict_shapes()
    worst = 0.0
    for fmt in ("zip", "legacy"):
        sd = metrics.read_state_dict(os.path.join(out_dir, f"fid_{fmt}.pth"))
        torch_shapes = {k: v.shape for k, v in sd.items() if not k.endswith("num_batches_tracked")}
        assert torch_shapes == expected, "state-dict keys/shapes differ from expected_state_dict_shapes()"
        net = metrics.inception_net(metrics.state_dict_to_variables(sd))
        print(f"{fmt} file: {len(torch_shapes)} keys and shapes == expected_state_dict_shapes()")
        for size in SIZES:
            pool, logits = metrics.inception_outputs(net, ref[f"images_{size}"], batch_size=N_IMAGES)
            (pn, pe), (ln, le) = _rel(pool, ref[f"pool_{size}"]), _rel(logits, ref[f"logits_{size}"])
            worst = max(worst, pn, ln)
            print(f"  {size:3d}x{size:<3d} -> 299: pool features max|d|/max|ref| {pn:.2e} (elementwise {pe:.2e}); "
                  f"logits {ln:.2e} (elementwise {le:.2e})")
        if fmt == "zip":
            metrics.write_state_dict(os.path.join(out_dir, "roundtrip_zip.pth"), sd_no_counter(sd))
            metrics.write_state_dict(os.path.join(out_dir, "roundtrip_legacy.pth"), sd_no_counter(sd), legacy=True)
    return worst


def sd_no_counter(sd):
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--torch-python", default="", help="python of an environment with torch and pytorch-fid")
    p.add_argument("--torch-side", default="", help=argparse.SUPPRESS)
    p.add_argument("--torch-check", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_side:
        torch_side(args.torch_side)
        return 0
    if args.torch_check:
        torch_check(args.torch_check)
        return 0
    try:
        import torch  # noqa: F401
        python = sys.executable
    except ImportError:
        python = args.torch_python
    if not python:
        print("fid_equivalence: skipped (torch is not installed here; pass --torch-python of an environment "
              "with torch and pytorch-fid)")
        return 0
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([python, os.path.abspath(__file__), "--torch-side", d], check=True)
        worst = compare(d)
        subprocess.run([python, os.path.abspath(__file__), "--torch-check", d], check=True)
    print(f"worst max|d|/max|ref| over sizes, formats, features and logits: {worst:.2e} "
          f"({'within' if worst <= 1e-4 else 'ABOVE'} 1e-4)")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
