"""Sampler cost and accuracy, all samplers on the same problems in one run.

    python -m benchmarks.samplers            # full (200 SDE steps)
    python -m benchmarks.samplers --quick    # 50 SDE steps, two timing repeats

Cost problem: a network-sized score, a random 3-layer MLP (width 512) on 64-d data, batch 256,
under the VP SDE. For each sampler: NFE, wall time after compilation (fastest of repeats),
compile time (first call minus the fastest warm call), and the overhead ratio wall / (NFE x t_eval):
the sampler's wall time over that of a jitted lax.scan of exactly NFE dependent score evaluations,
the two timed side by side (round robin) because the CPU is shared and noisy.
Accuracy problem: the 2-D Gaussian mixture with its exact score, n = 2000; the sliced
Wasserstein-1 distance to an exact sample, next to the same distance between two exact samples.
Also: Euler–Maruyama against a minimal hand-written lax.scan loop, and the probability-flow ODE
on device (diffrax Tsit5) against the 2021 way, scipy solve_ivp RK45 on the host with one device
round trip per evaluation, at the same rtol/atol.

Writes the table as Markdown to benchmarks/out/samplers.md.
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate

import score_sde as ss
from benchmarks.common import write_result
from score_sde import solvers
from score_sde.sde import batch_times

DIM, BATCH, WIDTH = 64, 256, 512


class RandomMLPScore(eqx.Module):
    """score(x, t) = -x + 0.1 tanh-MLP([x, t]): the cost of a real network, a tame vector field."""

    layers: tuple

    def __init__(self, key, dim=DIM, width=WIDTH, depth=3):
        sizes = [dim + 1] + [width] * depth + [dim]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple((jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b))
                            for k, a, b in zip(keys, sizes[:-1], sizes[1:]))

    def __call__(self, x, t):
        t = batch_times(t, x.shape[0], x.dtype)
        h = jnp.concatenate([x, t[:, None]], axis=1)
        for w, b in self.layers[:-1]:
            h = jnp.tanh(h @ w + b)
        w, b = self.layers[-1]
        return -x + 0.1 * (h @ w + b)


def timed(fn, repeats):
    """(first-call seconds, fastest warm seconds, last output) of fn() with results blocked on.

    The minimum over repeats, not the median: on a shared CPU the noise only ever adds time.
    """
    (first, warm), out = interleaved([fn], repeats)
    return first[0], warm[0], out[0]


def interleaved(fns, repeats):
    """Times several fns side by side (round robin), so that load changes hit them alike.

    Returns ((first-call seconds per fn, fastest warm seconds per fn), last outputs).
    """
    first, warm, outs = [], [[] for _ in fns], [None] * len(fns)
    for fn in fns:
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first.append(time.perf_counter() - t0)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = jax.block_until_ready(fn())
            warm[i].append(time.perf_counter() - t0)
    return (first, [min(w) for w in warm]), outs


def score_chain(score, k):
    """k dependent score evaluations in one jitted lax.scan: the pure network cost of k evaluations."""
    @eqx.filter_jit
    def chain(score, x):
        def body(x, t):
            return x + 1e-3 * score(x, t), None
        return jax.lax.scan(body, x, jnp.linspace(1.0, 1e-3, k))[0]

    x = jnp.ones((BATCH, DIM))
    return lambda: chain(score, x)


def minimal_em(sde, score, n_steps, eps):
    """A minimal hand-written Euler–Maruyama loop on the reverse SDE (the baseline), with denoising."""
    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        x = jax.random.normal(k0, (BATCH, DIM))
        ts = jnp.linspace(sde.T, eps, n_steps + 1)

        def body(x, inp):
            i, t, s = inp
            tb = jnp.full((BATCH,), t)
            g2 = sde.diffusion_sq(tb)[:, None]
            drift = sde.drift_coef(tb)[:, None] * x - g2 * score(x, tb)
            z = jax.random.normal(jax.random.fold_in(k1, i), x.shape)
            return x + drift * (s - t) + jnp.sqrt(g2 * (t - s)) * z, None

        x, _ = jax.lax.scan(body, x, (jnp.arange(n_steps), ts[:-1], ts[1:]))
        te = jnp.full((BATCH,), eps)
        return (x + sde.std(te)[:, None] ** 2 * score(x, te)) / sde.alpha(te)[:, None]

    return run


def host_ode(sde, score, x_T, eps, rtol, atol):
    """Probability-flow ODE the 2021 way: scipy RK45 on the host, one device call per evaluation."""
    drift = jax.jit(lambda x, t: ss.probability_flow_drift(sde, score, x, t))
    shape = x_T.shape

    def f(t, y):
        return np.asarray(drift(jnp.asarray(y.reshape(shape), jnp.float32), t), np.float64).ravel()

    sol = scipy.integrate.solve_ivp(f, (sde.T, eps), np.asarray(x_T, np.float64).ravel(), method="RK45",
                                    rtol=rtol, atol=atol)
    return sol.y[:, -1].reshape(shape), sol.nfev


def sliced_w1(x, y, n_dirs=64, seed=0):
    x, y = np.reshape(x, (len(x), -1)), np.reshape(y, (len(y), -1))
    d = np.random.default_rng(seed).normal(size=(x.shape[1], n_dirs))
    d /= np.linalg.norm(d, axis=0)
    return float(np.mean(np.abs(np.sort(x @ d, axis=0) - np.sort(y @ d, axis=0))))


def sampler_table(n_steps):
    return {
        f"euler_maruyama (N={n_steps})": solvers.get("euler_maruyama", n_steps=n_steps),
        f"pc reverse_diffusion + langevin (N={n_steps})": solvers.get("pc", n_steps=n_steps),
        f"pc ancestral_sampling + none (N={n_steps})": solvers.get("pc", predictor="ancestral_sampling",
                                                                    corrector="none", n_steps=n_steps),
        "ode tsit5 adaptive (rtol=atol=1e-5)": solvers.get("ode", solver="tsit5", rtol=1e-5, atol=1e-5),
        "ode heun (N=50)": solvers.get("ode", solver="heun", n_steps=50),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 SDE steps and two timing repeats")
    args = parser.parse_args()
    n_steps, repeats = (50, 2) if args.quick else (200, 5)
    sde = ss.VPSDE()
    eps = ss.default_eps(sde)
    score = RandomMLPScore(jax.random.PRNGKey(0))
    t_eval = timed(score_chain(score, 100), repeats)[1] / 100
    one_call = eqx.filter_jit(lambda s, x: s(x, 0.5))
    t_call = timed(lambda: one_call(score, jnp.ones((BATCH, DIM))), max(repeats, 5))[1]

    mix = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))
    exact_a, exact_b = (np.asarray(mix.sample(jax.random.PRNGKey(k), 2000)) for k in (101, 102))
    sw_ref = sliced_w1(exact_a, exact_b)

    rows, key = [], jax.random.PRNGKey(1)
    for label, sampler in sampler_table(n_steps).items():
        run = lambda: sampler(key, sde, score, (BATCH, DIM))  # noqa: E731
        t0 = time.perf_counter()
        nfe = int(jax.block_until_ready(run())[1].nfe)
        first = time.perf_counter() - t0
        # the sampler and a scan of exactly NFE score evaluations, timed side by side
        (_, (warm, chain_s)), _ = interleaved([run, score_chain(score, nfe)], repeats)
        x_mix, _ = sampler(key, sde, mix.score_fn(sde), (2000, 2))
        rows.append((label, nfe, warm, first - warm, warm / chain_s, sliced_w1(np.asarray(x_mix), exact_a)))

    em = solvers.get("euler_maruyama", n_steps=n_steps)
    base = minimal_em(sde, score, n_steps, eps)
    (_, (t_em, t_base)), _ = interleaved([lambda: em(key, sde, score, (BATCH, DIM)), lambda: base(key)], repeats)

    ode = solvers.get("ode", solver="tsit5", rtol=1e-5, atol=1e-5, denoise=False)
    x_T = sde.prior_sampling(jax.random.PRNGKey(2), (BATCH, DIM))
    solve = eqx.filter_jit(lambda x: ode.solve(sde, score, x, eps))
    _, t_dev, (x_dev, nfe_dev, _) = timed(lambda: solve(x_T), repeats)
    t0 = time.perf_counter()
    x_host, nfe_host = host_ode(sde, score, x_T, eps, 1e-5, 1e-5)
    t_host = time.perf_counter() - t0
    diff = float(np.max(np.abs(np.asarray(x_dev) - x_host)))

    lines = [
        f"Samplers on {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{'--quick' if args.quick else 'full'} run; score = random MLP 64-d, 3 x {WIDTH}, batch {BATCH}; "
        f"one score eval = {t_eval * 1e3:.2f} ms inside a scan of 100 ({t_call * 1e3:.2f} ms as its own jitted call).",
        "",
        "| sampler | NFE | wall (s) | compile (s) | overhead wall / (NFE evals in a scan) | SW to truth (mixture) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.2f} | {r[4]:.3f} | {r[5]:.4f} |" for r in rows]
    lines += [
        f"| two exact samples (reference) | | | | | {sw_ref:.4f} |",
        "",
        "| comparison | this library (s) | baseline (s) | ratio |",
        "|---|---:|---:|---:|",
        f"| Euler–Maruyama N={n_steps} vs minimal lax.scan loop | {t_em:.3f} | {t_base:.3f} "
        f"| {t_em / t_base:.3f} (library / minimal) |",
        f"| PF-ODE Tsit5 on device (NFE {int(nfe_dev)}) vs scipy RK45 host loop (NFE {nfe_host}), rtol=atol=1e-5 "
        f"| {t_dev:.3f} | {t_host:.3f} | {t_host / t_dev:.1f}x faster on device (max abs dx {diff:.1e}) |",
    ]
    text = "\n".join(lines)
    print(text)
    write_result("samplers", text, "python -m benchmarks.samplers" + (" --quick" if args.quick else ""),
                 title="Samplers: overhead, compile time, accuracy")


if __name__ == "__main__":
    main()
