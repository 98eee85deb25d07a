"""Denoising score matching losses (Song et al., ICLR 2021, eq. 7; DDPM; SMLD).

All losses perturb clean data with the SDE's Gaussian kernel,

    x_t = alpha(t) x_0 + std(t) z,   z ~ N(0, I),

whose conditional score is -z / std(t), and regress the model score on it:

    continuous:  E_t E_{x0, z} [ lambda(t) || s(x_t, t) + z / std(t) ||^2 ],   t ~ U(eps, T)
                 lambda(t) = std(t)^2 (default: || std s + z ||^2, the noise-prediction MSE)
                 lambda(t) = g(t)^2   (likelihood weighting; Song, Durkan et al. 2021)
    DDPM (VP):   t on the grid t_i = (i + 1) T / N, i ~ U{0..N-1}, lambda = std^2
    SMLD (VE):   t on the grid t_i = i T / (N - 1), i.e. sigma_i = sigma(t_i) geometric from
                 sigma_min to sigma_max, lambda = sigma_i^2 (NCSN's weighting)

The discrete schedules come from `sde.alpha` / `sde.std` on the grid, so any N works.
Per example the squared norm is summed over the data dimensions (`reduce_mean=False`,
the paper's choice) or averaged (`reduce_mean=True`); the batch is then averaged.

Randomness is drawn per example from a key of its own (`example_keys`), so the loss of a
batch does not depend on how the batch is split over devices or hosts.

A loss needs a `score_apply(params, x, t, rng) -> score` callable; `score_apply_from_model`
builds one from a Flax network through the one parameterisation in `score_sde.models`.
No parallelism lives here: the training driver wraps these functions in `pmap`.

The one training loss (`model_loss_fn`): loss_fn(params, batch, keys, frozen=None), the batch an
array x0 or {"image": x0, "cond": {part: value}}; each condition part is replaced by its null value
(`score_sde.models.conditions`) with the part's dropout rate, drawn from the example's own key, so
one network learns s(x, t, cond) and s(x, t, None) for classifier-free guidance (Ho & Salimans
2021). `frozen` carries non-trained variables as an argument (never a closed-over constant).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models.conditions import drop_parts, label_spec
from score_sde.models.parameterization import ScoreModel, model_score
from score_sde.sde import SDE, Array, expand_to

ScoreApply = Callable[[Any, Array, Array, Array], Array]
LossFn = Callable[[Any, Array, Array], Array]


def score_apply_from_model(model: nn.Module, sde: SDE, *, train: bool = True) -> ScoreApply:
    """score_apply(params, x, t, rng) = -net(x, c_noise(t)) / std(t), with `rng` as dropout key."""

    def score_apply(params, x, t, rng):
        rngs = None if rng is None else {"dropout": rng}
        return model_score(model, {"params": params}, sde, x, t, train=train, rngs=rngs)

    return score_apply


def drop_labels(keys: Array, y: Array, num_classes: int, rate: float) -> Array:
    """Labels y (B,) with each replaced by the null class `num_classes` with probability `rate`.

    The decision for an example comes from fold_in(its key, 2), independent of its time and noise
    (`conditions.drop_parts` with one label part makes the same decisions).
    """
    if rate <= 0:
        return y
    drop = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 2), rate))(keys)
    return jnp.where(drop, num_classes, y).astype(jnp.int32)


def split_batch(batch) -> tuple[Array, dict | None]:
    """(x0, cond) of a batch: an array (B, *dims) (no condition), {"image", "cond": {part: value}},
    or the older {"image", "label"} (the "label" part)."""
    if not isinstance(batch, Mapping):
        return batch, None
    if "image" not in batch:
        raise ValueError(f"a batch dict needs an 'image' entry (and optionally 'cond'), got keys {sorted(batch)}")
    cond = batch.get("cond")
    if "label" in batch:
        cond = {**(cond or {}), "label": batch["label"]}
    return batch["image"], cond


def model_loss_fn(model: ScoreModel, make_loss: Callable[[ScoreApply], LossFn], *, train: bool = True,
                  derive: Callable[[Array, Array], dict] | None = None) -> LossFn:
    """The one training loss: loss_fn(params, batch, keys, frozen=None) -> scalar, for unconditional,
    labelled and any other conditional training.

    Each condition part is replaced by its null value with probability `part.dropout` (per example,
    from its own key; `conditions.drop_parts`), so one network learns s(x, t, cond) and the
    null-condition score for classifier-free guidance.

    Args:
      model: the `ScoreModel` (its variables are ignored: `params` are differentiated).
      make_loss: score_apply -> loss_fn(params, x0, keys), e.g. `get_loss_fn` with its options bound.
      train: dropout layers on (and condition dropout applied) when True.
      derive: derive(keys, x0) -> {part: value}, condition parts made from the clean batch on device
        (an image-to-image task's `derive`, `score_sde.image_to_image`: low-res input, masked image),
        merged into the batch's condition before dropout.

    The returned loss_fn's `frozen`: variables that are not trained, passed as an argument (e.g. of
    the pmapped step) and never closed over: a dict of further Flax variable collections of the
    network, merged beside {"params": params}.
    """
    spec = model.cond_spec

    def loss_fn(params, batch, keys, frozen=None):
        x0, cond = split_batch(batch)
        if derive is not None:
            cond = {**(cond or {}), **derive(keys, x0)}
        if spec:
            cond = drop_parts(keys, spec, cond, x0.shape[0], x0.shape[1:], train)
        elif cond:
            raise ValueError(f"the batch has condition parts {sorted(cond)} but the model is unconditional; "
                             "set config.data.num_classes or config.data.cond to train a conditional model")

        def score_apply(p, x, t, rng):
            rngs = None if rng is None else {"dropout": rng}
            return model.with_variables({"params": p, **(frozen or {})})(x, t, cond, train=train, rngs=rngs)

        return make_loss(score_apply)(params, x0, keys)

    return loss_fn


def labeled_loss_fn(model: nn.Module, sde: SDE, make_loss: Callable[[ScoreApply], LossFn], *,
                    label_dropout: float = 0.0, train: bool = True) -> LossFn:
    """`model_loss_fn` for a class-conditional network (num_classes > 0) with label dropout `label_dropout`."""
    num_classes = int(getattr(model, "num_classes", 0))
    if not num_classes:
        raise ValueError("labeled_loss_fn needs a class-conditional network (num_classes > 0)")
    return model_loss_fn(ScoreModel(model, None, sde, label_spec(num_classes, label_dropout)), make_loss, train=train)


def example_keys(key: Array, n: int, offset=0) -> Array:
    """Keys (n, 2) for examples offset .. offset + n - 1: fold_in(key, global example index)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(n))


def draw_time_and_noise(keys: Array, x0: Array, draw_t: Callable[[Array], Array]) -> tuple[Array, Array]:
    """The per-example time and noise a loss draws: each example's key is split into (kt, kz).

    `dsm_loss` uses draw_t(k) = U(eps, T) and the discrete losses a uniformly drawn grid time, so
    calling this with the same keys and rule reproduces a loss's draws (common random numbers).

    Args:
      keys: per-example keys (B, 2), e.g. `example_keys(key, B)`.
      x0: clean data (B, *dims); gives the noise's shape and dtype.
      draw_t: draw_t(kt) -> scalar time for one example.

    Returns:
      t: times (B,) = vmap(draw_t)(kt).
      z: standard normal noise (B, *dims) in x0's dtype, from kz.
    """

    def one(k):
        kt, kz = jax.random.split(k)
        return draw_t(kt), jax.random.normal(kz, x0.shape[1:], x0.dtype)

    return jax.vmap(one)(keys)


def _reduce(sq: Array, reduce_mean: bool) -> Array:
    """Sum (or mean) of a per-element array over all non-batch dims: (B,)."""
    sq = sq.reshape(sq.shape[0], -1)
    return jnp.mean(sq, axis=1) if reduce_mean else jnp.sum(sq, axis=1)


def dsm_per_example(score_apply: ScoreApply, sde: SDE, params, x0: Array, t: Array, z: Array,
                    rng: Array, *, reduce_mean: bool = True, likelihood_weighting: bool = False) -> Array:
    """lambda(t) || s(x_t, t) + z / std(t) ||^2 for given t (B,) and z (like x0): (B,).

    lambda = std^2 computes || std s + z ||^2 directly (no division by a tiny std);
    lambda = g^2 (likelihood weighting) computes g^2 || s + z / std ||^2.
    """
    mean, std = sde.marginal_prob(x0, t)
    x_t = mean + expand_to(std, x0) * z
    score = score_apply(params, x_t, t, rng)
    if likelihood_weighting:
        err = score + z / expand_to(std, x0)
        return _reduce(err**2, reduce_mean) * sde.diffusion_sq(t)
    return _reduce((expand_to(std, x0) * score + z) ** 2, reduce_mean)


def dsm_loss(score_apply: ScoreApply, sde: SDE, params, x0: Array, keys: Array, *, reduce_mean: bool = True,
             likelihood_weighting: bool = False, eps: float = 1e-5) -> Array:
    """Continuous DSM loss (Song et al. 2021, eq. 7) with t ~ U(eps, T): a scalar.

    Args:
      score_apply: score_apply(params, x, t, rng) -> score like x.
      sde: the forward SDE.
      params: network parameters (differentiated).
      x0: clean data (B, *dims).
      keys: per-example keys (B, 2), e.g. `example_keys(key, B)`.
      reduce_mean: mean (True) or sum (False) over data dims.
      likelihood_weighting: g(t)^2 weighting instead of std(t)^2.
      eps: smallest time.
    """
    t, z = draw_time_and_noise(keys, x0, lambda k: jax.random.uniform(k, (), x0.dtype, eps, sde.T))
    per = dsm_per_example(score_apply, sde, params, x0, t, z, jax.random.fold_in(keys[0], 1),
                          reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting)
    return jnp.mean(per)


def _grid_loss(score_apply, sde, params, x0, keys, grid: Array, reduce_mean: bool) -> Array:
    """std^2-weighted DSM with t drawn uniformly from a discrete grid (N,)."""
    draw_t = lambda k: grid[jax.random.randint(k, (), 0, grid.shape[0])].astype(x0.dtype)  # noqa: E731
    t, z = draw_time_and_noise(keys, x0, draw_t)
    per = dsm_per_example(score_apply, sde, params, x0, t, z, jax.random.fold_in(keys[0], 1),
                          reduce_mean=reduce_mean)
    return jnp.mean(per)


def ddpm_grid(sde: SDE, n_levels: int) -> Array:
    """DDPM's N time steps t_i = (i + 1) T / N, i = 0..N-1 (alpha_bar_i = sde.alpha(t_i)^2)."""
    return sde.T * jnp.arange(1, n_levels + 1) / n_levels


def smld_grid(sde: SDE, n_levels: int) -> Array:
    """SMLD's N noise levels as times t_i = i T / (N - 1): sigma_i = sde.std(t_i), sigma_min..sigma_max."""
    return sde.T * jnp.arange(n_levels) / (n_levels - 1)


def ddpm_loss(score_apply: ScoreApply, sde: SDE, params, x0: Array, keys: Array, *, n_levels: int = 1000,
              reduce_mean: bool = True) -> Array:
    """DDPM's loss (Ho et al. 2020): E_i || eps_theta(x_i, i) - z ||^2 = E_i || std_i s + z ||^2."""
    return _grid_loss(score_apply, sde, params, x0, keys, ddpm_grid(sde, n_levels), reduce_mean)


def smld_loss(score_apply: ScoreApply, sde: SDE, params, x0: Array, keys: Array, *, n_levels: int = 1000,
              reduce_mean: bool = True) -> Array:
    """SMLD's loss (Song & Ermon 2019): E_i sigma_i^2 || s(x0 + sigma_i z, sigma_i) + z / sigma_i ||^2."""
    return _grid_loss(score_apply, sde, params, x0, keys, smld_grid(sde, n_levels), reduce_mean)


def get_loss_fn(score_apply: ScoreApply, sde: SDE, *, continuous: bool = True, discrete: str = "ddpm",
                reduce_mean: bool = True, likelihood_weighting: bool = False, eps: float = 1e-5,
                n_levels: int = 1000) -> LossFn:
    """loss_fn(params, x0, keys) -> scalar for the chosen objective.

    Args:
      continuous: the continuous DSM loss; otherwise the discrete one named by `discrete`.
      discrete: "ddpm" (for VP) or "smld" (for VE); only used when continuous is False.
      Other arguments as in `dsm_loss`, `ddpm_loss` and `smld_loss`.
    """
    if sde.training_objective == "hsm":  # CLD: the velocity's score given x0 (hybrid score matching)
        if not continuous:
            raise ValueError("CLD trains with the continuous hybrid score matching loss; set training.continuous=True")
        return lambda params, x0, keys: hsm_loss(score_apply, sde, params, x0, keys, reduce_mean=reduce_mean,
                                                  likelihood_weighting=likelihood_weighting, eps=eps)
    if continuous:
        return lambda params, x0, keys: dsm_loss(score_apply, sde, params, x0, keys, reduce_mean=reduce_mean,
                                                  likelihood_weighting=likelihood_weighting, eps=eps)
    if likelihood_weighting:
        raise ValueError("likelihood_weighting needs continuous training (training.continuous=True)")
    table = {"ddpm": ddpm_loss, "smld": smld_loss}
    if discrete not in table:
        raise ValueError(f"unknown discrete loss {discrete!r}; valid: {sorted(table)}")
    fn = table[discrete]
    return lambda params, x0, keys: fn(score_apply, sde, params, x0, keys, n_levels=n_levels,
                                       reduce_mean=reduce_mean)


def hsm_per_example(score_apply: ScoreApply, sde, params, x0: Array, t: Array, z: Array, rng: Array, *,
                    reduce_mean: bool = True, likelihood_weighting: bool = False) -> Array:
    """CLD's hybrid score matching for given t (B,) and z (B, 2, *dims): (B,).

    u_t = mean + L z (`CLD.perturb`, v0 integrated out), whose velocity score given x0 is
    -l_t z_v (Dockhorn et al. 2022, eq. 11 / App. B.3). Weighting l_t^-2 (default) regresses
    || s / l_t + z_v ||^2, the noise-prediction form the paper trains its image models with;
    likelihood weighting 2 Gamma beta || s + l_t z_v ||^2 (the G G^T of the ELBO).
    """
    u = sde.perturb(x0, t, z)
    score = score_apply(params, u, t, rng)
    ell = expand_to(sde.hsm_scale(t), x0)
    if likelihood_weighting:
        return _reduce((score + ell * z[:, 1]) ** 2, reduce_mean) * sde.diffusion_sq(t)
    return _reduce((score / ell + z[:, 1]) ** 2, reduce_mean)


def hsm_loss(score_apply: ScoreApply, sde, params, x0: Array, keys: Array, *, reduce_mean: bool = True,
             likelihood_weighting: bool = False, eps: float = 1e-5) -> Array:
    """CLD's hybrid score matching loss with t ~ U(eps, T): a scalar (arguments as in `dsm_loss`;
    `score_apply` takes the state (B, 2, *dims) and returns the velocity score (B, *dims))."""
    state = jax.ShapeDtypeStruct(sde.state_shape(x0.shape), x0.dtype)
    t, z = draw_time_and_noise(keys, state, lambda k: jax.random.uniform(k, (), x0.dtype, eps, sde.T))
    per = hsm_per_example(score_apply, sde, params, x0, t, z, jax.random.fold_in(keys[0], 1),
                          reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting)
    return jnp.mean(per)


__all__ = ["ScoreApply", "LossFn", "score_apply_from_model", "drop_labels", "split_batch", "model_loss_fn", "labeled_loss_fn", "example_keys",
           "draw_time_and_noise", "dsm_per_example", "dsm_loss", "ddpm_grid", "smld_grid", "ddpm_loss", "smld_loss", "get_loss_fn",
           "hsm_per_example", "hsm_loss"]
