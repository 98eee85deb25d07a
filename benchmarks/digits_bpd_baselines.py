"""Classical densities on the digits: test bits/dim of a full-covariance Gaussian and the best GaussianMixture.

    python -m benchmarks.digits_bpd_baselines [--workdir runs/digits] [--draws 5]

Both are fitted to the digits TRAINING split (1497 images), dequantised and scaled exactly as
score_sde.data does for configs/digits_vp.py (17 levels, centered: x = 2 (k + u) / 17 - 1,
u ~ U[0, 1)^64). The GaussianMixture's n_components and covariance_type are chosen by the
held-out log-likelihood on a validation part (20 %) of the training split, then refitted on the
whole training split. Test bits/dim uses the same dequantisation and the offset rule of
score_sde.bpd (bpd = -log p / (D ln 2) + log2(17) - log2(2)), averaged over `--draws`
dequantisation draws of the 300 test images (mean +- standard error over images). If
<workdir>/likelihood/likelihood_<step>.json exists (python main.py --mode=likelihood), the
score model's figure is printed beside them. Writes benchmarks/out/digits_bpd.md.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
import os
import pathlib
import time

import numpy as np
from sklearn.mixture import GaussianMixture

from benchmarks.common import RESULTS
from configs import digits_vp
from score_sde import data
from score_sde.bpd import bits_per_dim, bpd_offset

RESULT = RESULTS / "digits_bpd.md"  # benchmarks/out (git-ignored), not the committed benchmarks/results
DATA_RANGE = (-1.0, 1.0)  # config.data.centered = True
N_COMPONENTS = (1, 2, 5, 10, 20, 40, 80, 160, 320)
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def dequantised(raw: np.ndarray, num_levels: int, seed: int) -> np.ndarray:
    """(N, 8, 8, 1) integer levels -> (N, 64) float64 points 2 (k + u) / L - 1 (score_sde.data.dequantize)."""
    u = np.random.default_rng(seed).random(raw.shape, np.float32)
    return data.dequantize(raw, u, num_levels, centered=True).reshape(len(raw), -1).astype(np.float64)


def test_bpd(logp_fn, raw_test: np.ndarray, num_levels: int, draws: int) -> tuple[float, float]:
    """Mean and standard error over test images of bits/dim, each averaged over `draws` dequantisations."""
    shape = raw_test.shape[1:]
    per_draw = [np.asarray(bits_per_dim(logp_fn(dequantised(raw_test, num_levels, 1000 + d)), shape,
                                        num_levels=num_levels, data_range=DATA_RANGE)) for d in range(draws)]
    per_image = np.mean(per_draw, axis=0)
    return float(per_image.mean()), float(per_image.std(ddof=1) / math.sqrt(len(per_image)))


def gaussian_logp(train: np.ndarray):
    """Full-covariance Gaussian by maximum likelihood (sample mean and covariance) -> logp(x) in nats."""
    mean = train.mean(axis=0)
    cov = np.cov(train, rowvar=False, bias=True)
    chol = np.linalg.cholesky(cov)
    logdet = 2.0 * np.log(np.diag(chol)).sum()

    def logp(x):
        z = np.linalg.solve(chol, (x - mean).T)
        return -0.5 * (z ** 2).sum(axis=0) - 0.5 * logdet - 0.5 * x.shape[1] * math.log(2 * math.pi)

    return logp


def select_mixture(train: np.ndarray, seed: int) -> tuple[dict, list[tuple[dict, float]]]:
    """The GaussianMixture settings with the best mean held-out log-likelihood (20 % of `train`)."""
    perm = np.random.default_rng(seed).permutation(len(train))
    n_val = len(train) // 5
    fit, val = train[perm[n_val:]], train[perm[:n_val]]
    scores = []
    for k, cov in itertools.product(N_COMPONENTS, COVARIANCE_TYPES):
        if cov == "full" and k * (fit.shape[1] + 1) > len(fit):
            continue  # fewer points per component than dimensions: singular, meaningless fits
        gm = GaussianMixture(k, covariance_type=cov, random_state=seed, max_iter=200).fit(fit)
        scores.append(({"n_components": k, "covariance_type": cov}, float(gm.score(val))))
    best = max(scores, key=lambda s: s[1])[0]
    return best, scores


def model_result(workdir: str | None) -> dict | None:
    """The latest <workdir>/likelihood/likelihood_<step>.json, if any."""
    if not workdir:
        return None
    files = glob.glob(os.path.join(workdir, "likelihood", "likelihood_*.json"))
    if not files:
        return None
    results = []
    for path in files:  # likelihood_<step>_<divergence>_<hash>[_n].json (or the older likelihood_<step>.json)
        with open(path) as f:
            results.append(json.load(f) | {"path": path})
    # the latest step, and at it the result on the most examples (a quick small run does not hide it)
    return max(results, key=lambda r: (r["step"], r.get("num_examples", 0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/digits", help="a trained digits run with a likelihood JSON")
    parser.add_argument("--draws", type=int, default=5, help="dequantisation draws of the test split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    config = digits_vp.get_config()
    raw_train, raw_test = (data.load_split(config, s) for s in ("train", "test"))
    levels = raw_train.num_levels
    raw_train = raw_train.source.get(np.arange(len(raw_train.source)))
    raw_test = raw_test.source.get(np.arange(len(raw_test.source)))
    train = dequantised(raw_train, levels, args.seed)

    rows = [("Full-covariance Gaussian (ML)", *test_bpd(gaussian_logp(train), raw_test, levels, args.draws))]
    best, scores = select_mixture(train, args.seed)
    gm = GaussianMixture(best["n_components"], covariance_type=best["covariance_type"], random_state=args.seed,
                         max_iter=200).fit(train)
    name = f"GaussianMixture ({best['n_components']} components, {best['covariance_type']} covariance)"
    rows.append((name, *test_bpd(gm.score_samples, raw_test, levels, args.draws)))
    model = model_result(args.workdir)
    if model is not None:
        rows.append((f"Score model (step {model['step']}, {model['divergence']}, {model['num_examples']} images)",
                     model["bits_per_dim"], model["standard_error"]))

    lines = [
        "# Digits test bits/dim: score model vs classical densities",
        "",
        "`python -m benchmarks.digits_bpd_baselines"
        + (f" --workdir {args.workdir}`" if args.workdir else "`"),
        "",
        f"Fitted to the digits training split ({len(raw_train)} images), evaluated on the test split "
        f"({len(raw_test)} images); {levels} levels dequantised uniformly and scaled to [-1, 1]; "
        f"bits/dim = -log p / (64 ln 2) + {bpd_offset(levels, DATA_RANGE):.4f}; classical figures averaged over "
        f"{args.draws} dequantisation draws (mean +- standard error over images). Lower is better.",
        "",
        "| density | test bits/dim | std. error |",
        "|---|---:|---:|",
        *(f"| {n} | {b:.3f} | {s:.3f} |" for n, b, s in rows),
        "",
        "GaussianMixture selection (mean held-out log-likelihood per image, nats, 20 % of the training split):",
        "",
        "| n_components | " + " | ".join(COVARIANCE_TYPES) + " |",
        "|---:|" + "---:|" * len(COVARIANCE_TYPES),
    ]
    table = {(s["n_components"], s["covariance_type"]): v for s, v in scores}
    for k in N_COMPONENTS:
        cells = [f"{table[(k, c)]:.1f}" if (k, c) in table else "-" for c in COVARIANCE_TYPES]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if model is None:
        lines += ["", f"No likelihood JSON in {args.workdir}/likelihood/; run "
                  f"`python main.py --workdir={args.workdir} --mode=likelihood` to add the score model."]
    else:
        lines += ["", f"Score model figure from `{model['path']}`."]
    lines += ["", f"Run time {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(text)


if __name__ == "__main__":
    main()
