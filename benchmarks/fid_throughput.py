"""Inception pass throughput (images/s) of the FID network, and what N samples cost.

    PYTHONPATH=. python benchmarks/fid_throughput.py --weights auto --size 32 --batch 50 --images 200

Compilation is timed apart (`score_sde.timing`-style: the first batch); the rate is over the
remaining batches. Random uint8 images of size x size x 3 are resized to 299 inside the network.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from score_sde import metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="auto", help="default_1.pt, a pytorch-fid .pth, or auto")
    p.add_argument("--size", type=int, default=32, help="side of the input images (resized to 299)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--images", type=int, default=200, help="images timed after the compiling batch")
    p.add_argument("--target", type=int, default=50_000, help="sample count to cost")
    args = p.parse_args()
    net = metrics.load_inception(args.weights, cache_dir="/tmp/fid_throughput_cache")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    metrics.inception_features(net, x, args.batch)
    compile_s = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    while n < args.images:
        metrics.inception_features(net, x, args.batch)
        n += args.batch
    run_s = time.perf_counter() - t0
    rate = n / run_s
    print(f"{jax.devices()[0].platform} ({jax.device_count()} device(s)), {net.variant} weights sha1 {net.sha1[:12]}, "
          f"{args.size}x{args.size} -> 299, batch {args.batch}: first batch (compile + run) {compile_s:.1f} s; "
          f"{n} images in {run_s:.1f} s = {rate:.1f} images/s; {args.target:,} samples: "
          f"{args.target / rate / 60:.1f} min of Inception (plus the same again for a 50k reference split)")


if __name__ == "__main__":
    main()
