"""Conditional training against the exact posterior: configs/toy_cond.py's samples vs p(x | y).

    python main.py --config=configs/toy_cond.py --workdir=runs/toy_cond --mode=train
    python main.py --config=configs/toy_cond.py --workdir=runs/toy_cond --mode=sample
    python main.py --config=configs/toy_cond.py --workdir=runs/toy_cond --mode=sample --config.sampling.condition=null
    python benchmarks/toy_cond_oracle.py runs/toy_cond/samples/<cond>.npz runs/toy_cond/samples/<null>.npz

Prints, for the conditional samples, the joint sliced W1 of the (y, x) pairs against exact posterior
draws x* ~ p(x | y) with the same y, next to its Monte Carlo floor (the same statistic between two
independent sets of exact draws), and for the null-condition samples the sliced W1 against the
marginal (toy_gmm) with its floor. The bar: statistic <= 2 x floor + 0.03.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from score_sde import data


def sliced_w1(x, y, n_dirs: int = 64, seed: int = 0) -> float:
    """Sliced W1 of two equal-size samples (B, D): mean over fixed random directions of the 1-D W1."""
    x, y = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (x, y))
    d = np.random.default_rng(seed).normal(size=(x.shape[1], n_dirs))
    d /= np.linalg.norm(d, axis=0)
    return float(np.mean(np.abs(np.sort(x @ d, axis=0) - np.sort(y @ d, axis=0))))


def posterior_check(samples: np.ndarray, ys: np.ndarray, seed: int = 0) -> dict:
    """{"w1", "floor"}: joint sliced W1 of (y, samples) vs (y, exact posterior draws), and between two
    independent exact sets (the Monte Carlo floor)."""
    gmm, (A, noise) = data.toy_gmm_mixture(), data.toy_cond_observation()
    key = jax.random.PRNGKey(seed)
    exact = [np.asarray(gmm.posterior_samples(jax.random.fold_in(key, i), A, ys, noise)) for i in (1, 2)]
    pairs = lambda x: np.concatenate([ys, x], axis=1)  # noqa: E731
    return {"w1": sliced_w1(pairs(samples), pairs(exact[0])), "floor": sliced_w1(pairs(exact[1]), pairs(exact[0]))}


def marginal_check(samples: np.ndarray, seed: int = 0) -> dict:
    """{"w1", "floor"}: sliced W1 of samples vs the toy_gmm marginal, and of two exact sets."""
    gmm, key = data.toy_gmm_mixture(), jax.random.PRNGKey(seed)
    exact = [np.asarray(gmm.sample(jax.random.fold_in(key, i), len(samples))) for i in (1, 2)]
    return {"w1": sliced_w1(samples, exact[0]), "floor": sliced_w1(exact[1], exact[0])}


def passes(result: dict, slack: float = 0.03) -> bool:
    """The bar of issue 23: statistic <= 2 x floor + slack."""
    return result["w1"] <= 2 * result["floor"] + slack


def main(cond_npz: str, null_npz: str | None = None) -> None:
    f = np.load(cond_npz)
    out = {"posterior": posterior_check(f["samples"], f["cond_y"])}
    if null_npz:
        out["marginal"] = marginal_check(np.load(null_npz)["samples"])
    for r in out.values():
        r["bar"] = 2 * r["floor"] + 0.03
        r["pass"] = passes(r)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
