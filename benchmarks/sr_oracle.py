"""Super-resolution oracle: a conditional network trained on a 4x4 Gaussian-mixture "image" against
the exact posterior p(x | low_res) of 2x2 average-pool downsampling.

    python -m benchmarks.sr_oracle [--steps 4000] [--samples 2000] [--observations 4] [--aug-level 0.5 --eval-level 0.25]
        [--components 3|1] [--sampler ode|euler_maruyama --em-steps 1000]
    python -m benchmarks.sr_oracle --smoke      # 20 steps, 200 samples: the wiring only

Data: a 3-component mixture over 4x4x1 images (isotropic stds 0.3 / 0.5 / 0.4, means N(0, 1) per pixel,
seeded), fresh draws every step. The model: the small UNet (nf 32, one level) with the
`SuperResolution(factor=2)` task of score_sde.image_to_image, i.e. the `image` part low_res (2x2) and
the `noise_level` part aug_level (0 here: no augmentation), trained by the one loss
(`losses.model_loss_fn(..., derive=task.derive)`), EMA 0.999 with warm-up. For a few observations
y = area_downsample(x*) of fresh draws x*, `--samples` samples of the model (`--sampler`: the
probability-flow ODE, tsit5, 1e-4, or the reverse SDE by Euler-Maruyama) are compared with `analytic.pool_conditional(gmm, y, 2)`: the RMS error of the mean over the 16
pixels and the relative Frobenius error of the covariance, next to the Monte Carlo floor (the same
figures for `--samples` exact posterior draws). The bar: model error <= 2 x floor + 0.05.

The noiseless posterior is singular: the 4 pooled directions (the row space of the pooling matrix A)
are fixed, so its covariance lives on the 12-dimensional free subspace and the relative covariance
error also counts whatever spread the model leaves in the pooled directions. Two more views:
"free-subspace" errors compare P C P (P = I - A^T (A A^T)^-1 A, the projector onto the free subspace)
instead of C; and `--aug-level a` trains with conditioning augmentation s ~ U(0, a), and
`--eval-level s` adds one more row per observation where the model is given low_res + s e and
aug_level s and compared with the full-rank posterior p(x | A x + s e = y)
(`analytic.pool_conditional(..., noise_std=s)`).

The ODE is the stricter test of the learned score: an error of the score moves an ODE sample for good,
while the reverse SDE's noise and drift pull it back towards the data; in the measured runs (README)
about one ODE sample in 1000 ends far from the data, which alone breaks the covariance bar, and
the reverse SDE's samples do not. tests/test_image_to_image.py runs the linear-Gaussian case of this
oracle (3000 steps, euler_maruyama) in CI.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import score_sde as ss
from benchmarks.common import write_result
from score_sde import analytic, image_to_image as i2i, losses, models, solvers
from score_sde.drivers import train
from score_sde.models.conditions import Image, NoiseLevel, Part

SDE = ss.VPSDE()


def mixture(components: int = 3) -> analytic.GaussianMixture:
    """The 3-component mixture of the module doc; `components=1`: its second component alone (a
    linear-Gaussian model, whose posterior is one Gaussian: no component weights to learn)."""
    rng = np.random.default_rng(4)
    means = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)
    if components == 1:
        return analytic.GaussianMixture(jnp.array([1.0]), means[1:2], jnp.array([0.5]))
    if components != 3:
        raise ValueError(f"--components must be 1 or 3, got {components}")
    return analytic.GaussianMixture(jnp.array([0.5, 0.3, 0.2]), means, jnp.array([0.3, 0.5, 0.4]))


def component_fractions(samples: np.ndarray, gmm: analytic.GaussianMixture) -> np.ndarray:
    """(K,) fraction of `samples` whose most likely prior component (argmax_k log w_k + log N(x; mu_k,
    s_k^2 I)) is k: applied alike to model samples and exact posterior draws, it shows whether an error
    is in the posterior's component weights."""
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    mu, sd = np.asarray(gmm.means, np.float64), np.asarray(gmm.stds, np.float64)
    w = np.asarray(gmm.weights, np.float64)
    d2 = ((flat[:, None, :] - mu[None]) ** 2).sum(-1)
    logp = np.log(w / w.sum()) - 0.5 * d2 / sd ** 2 - flat.shape[1] * np.log(sd)
    return np.bincount(logp.argmax(1), minlength=len(w)) / len(flat)


def train_model(gmm, steps: int, batch: int = 256, aug_level: float = 0.0):
    task = i2i.SuperResolution(factor=2, max_aug_level=aug_level)
    spec = (Part("aug_level", NoiseLevel()), Part("low_res", Image(channels_=1, size=2)))
    net = models.UNet(nf=32, ch_mult=(1,), num_res_blocks=1, cond_spec=spec)
    model = ss.ScoreModel(net, None, SDE, spec)
    make = lambda apply: lambda p, x0, k: losses.dsm_loss(apply, SDE, p, x0, k)  # noqa: E731
    opt = optax.apply_if_finite(optax.adam(optax.warmup_cosine_decay_schedule(0.0, 2e-3, 200, max(steps, 201),
                                                                                 end_value=1e-4)), 10)
    step = jax.jit(train.make_train_step(losses.model_loss_fn(model, make, derive=task.derive), opt, 0.999))
    x0 = gmm.sample(jax.random.PRNGKey(0), 2)
    params = jax.jit(lambda k: net.init(k, x0, jnp.zeros((2,)), cond=task.derive(losses.example_keys(k, 2), x0)))(
        jax.random.PRNGKey(1))["params"]
    state = train.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), params, jax.random.PRNGKey(2))
    draw = jax.jit(lambda k: gmm.sample(k, batch))
    for i in range(steps):
        state, loss = step(state, draw(jax.random.fold_in(jax.random.PRNGKey(3), i)))
    return model.with_variables({"params": state.ema_params}), float(loss["loss"])


def free_projector(A: np.ndarray) -> np.ndarray:
    """(D, D) orthogonal projector onto the null space of A (the directions the observation leaves free)."""
    return np.eye(A.shape[1]) - A.T @ np.linalg.solve(A @ A.T, A)


def figures(samples: np.ndarray, post, proj: np.ndarray) -> tuple[float, float, float]:
    """(RMS error of the mean over pixels, relative Frobenius error of the covariance, the same on the
    free subspace: ||P (C_model - C) P|| / ||P C P||) against `post`."""
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    mean, cov = np.asarray(post.mean(), np.float64).reshape(-1), np.asarray(post.cov(), np.float64)
    err = np.cov(flat, rowvar=False) - cov
    return (float(np.sqrt(np.mean((flat.mean(0) - mean) ** 2))),
            float(np.linalg.norm(err) / np.linalg.norm(cov)),
            float(np.linalg.norm(proj @ err @ proj) / np.linalg.norm(proj @ cov @ proj)))


def make_solve(model, sampler, n: int):
    """solve(key, low_res (2, 2, 1), s) -> n samples (n, 4, 4, 1) of `model` given low_res and aug_level s
    (compiled once)."""
    return jax.jit(lambda k, low, s: sampler(k, SDE, model.bind({"low_res": jnp.broadcast_to(low, (n, 2, 2, 1)),
                                                                 "aug_level": jnp.full((n,), s)}), (n, 4, 4, 1))[0])


def compare(solve, gmm, x_true, s: float, j: int, n: int):
    """Samples `n` draws of `solve` (make_solve) given the 2x2 area-downsampled x_true (4, 4, 1) plus s e
    (aug_level s) and compares them with the exact p(x | A x + s e = y) and `n` exact draws (the Monte Carlo
    floor). Returns (figures of the model, figures of the exact draws, (model, exact) component fractions);
    the keys are fixed by observation index j."""
    clean = i2i.area_downsample(jnp.asarray(x_true)[None], 2)[0]
    low = clean + s * jax.random.normal(jax.random.PRNGKey(40 + j), clean.shape)
    post = analytic.pool_conditional(gmm, low, 2, s)
    model_x = np.asarray(solve(jax.random.PRNGKey(20 + j), low, s))
    exact_x = np.asarray(post.sample(jax.random.PRNGKey(30 + j), n))
    proj = free_projector(analytic.pool_matrix((4, 4, 1), 2))
    return (figures(model_x, post, proj), figures(exact_x, post, proj),
            (component_fractions(model_x, gmm), component_fractions(exact_x, gmm)))


def within_bar(got, floor) -> bool:
    """The bar: the mean's and the covariance's errors each <= 2 x their Monte Carlo floor + 0.05."""
    return all(g <= 2 * f + 0.05 for g, f in zip(got[:2], floor[:2]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--observations", type=int, default=4)
    parser.add_argument("--aug-level", type=float, default=0.0, help="training: s ~ U(0, this) added to low_res")
    parser.add_argument("--eval-level", type=float, default=0.0,
                        help="> 0: also compare at this augmentation level with the noisy-observation posterior")
    parser.add_argument("--components", type=int, default=3,
                        help="3: the mixture; 1: one Gaussian (linear-Gaussian: the posterior has no weights to learn)")
    parser.add_argument("--sampler", default="ode", choices=("ode", "euler_maruyama"),
                        help="ode: the probability-flow ODE (tsit5, 1e-4); euler_maruyama: the reverse SDE, --em-steps steps")
    parser.add_argument("--em-steps", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.samples, args.observations = 20, 200, 1
    t0 = time.perf_counter()
    gmm = mixture(args.components)
    model, loss = train_model(gmm, args.steps, aug_level=args.aug_level)
    train_s = time.perf_counter() - t0
    if args.sampler == "ode":
        sampler, sampler_name = solvers.get("ode", solver="tsit5", rtol=1e-4, atol=1e-4), "ode tsit5 1e-4"
    else:
        sampler, sampler_name = (solvers.get("euler_maruyama", n_steps=args.em_steps),
                                 f"euler_maruyama {args.em_steps} steps")
    solve = make_solve(model, sampler, args.samples)
    truth = np.asarray(gmm.sample(jax.random.PRNGKey(11), args.observations))
    levels = [0.0] + ([args.eval_level] if args.eval_level > 0 else [])
    rows, ok = [], True
    for j in range(args.observations):
        for s in levels:
            got, floor, fractions = compare(solve, gmm, truth[j], s, j, args.samples)
            passed = within_bar(got, floor)
            ok &= passed
            fractions = "/".join(f"{a:.2f}:{b:.2f}" for a, b in zip(*fractions))
            rows.append(f"| {j} | {s:g} | {got[0]:.3f} | {floor[0]:.3f} | {got[1]:.3f} | {floor[1]:.3f} | "
                        f"{got[2]:.3f} | {floor[2]:.3f} | {fractions} | {'yes' if passed else 'no'} |")
            print(rows[-1], flush=True)
    n = args.samples
    lines = [f"4x4 {'mixture' if args.components == 3 else 'single Gaussian'}, 2x2 average pool; {args.steps} training steps (batch 256, conditioning augmentation "
             f"s ~ U(0, {args.aug_level:g}), final loss {loss:.4f}, {train_s:.0f} s incl. compile); {n} samples per "
             f"observation and level ({sampler_name}). Level s: the model gets low_res + s e and aug_level s and is "
             f"compared with p(x | A x + s e = low_res); level 0 is the singular noiseless posterior.", "",
             "| observation | level s | mean RMS error | floor | cov rel. error | floor | free-subspace cov rel. error "
             "| floor | component fractions model:exact | mean and cov within 2 x floor + 0.05 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|", *rows, "",
             f"All within the bar: {'yes' if ok else 'no'}. Total {time.perf_counter() - t0:.0f} s."]
    cmd = "python -m benchmarks.sr_oracle" + (" --smoke" if args.smoke else
                                              f" --steps {args.steps} --samples {n} --observations {args.observations}"
                                              f" --aug-level {args.aug_level:g} --eval-level {args.eval_level:g}"
                                              f" --components {args.components}"
                                              + (f" --sampler euler_maruyama --em-steps {args.em_steps}"
                                                 if args.sampler != "ode" else ""))
    name = ("sr_oracle" if args.components == 3 else "sr_oracle_gaussian") + ("_em" if args.sampler != "ode" else "")
    path = write_result(name, "\n".join(lines), cmd, directory=args.out)
    print(path.read_text())
    return ok


if __name__ == "__main__":
    main()
