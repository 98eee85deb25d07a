"""A distilled student: a network whose output becomes a data prediction x0_hat(x, t) that stays
well-posed at few steps, and, through that prediction, a score function every sampler accepts.

Two parameterisations (the network is any score network of `score_sde.models`, called as
net.apply(variables, x_in, c_noise(t)) with the usual c_noise(t) = -lambda(t)):

    "v"            progressive distillation (Salimans & Ho 2022, Sec. 4). With a = alpha / r,
                   s = std / r, r = sqrt(alpha^2 + std^2) (the variance-preserving angle of any
                   scalar kernel) and x_in = x / r, the network predicts v = a z - s x0 and
                   x0_hat = a x_in - s v.  At the prior (a -> 0) x0_hat = -v: no division by
                   alpha, unlike the noise prediction's x0 = (x - std eps) / alpha, which a 1-step
                   student must use at alpha(T) = 0.0066 (VP) and which amplifies its errors 150x.
    "consistency"  consistency models (Song et al. 2023, Sec. 3 / App. C): in the equivalent VE
                   noise level sigma = std / alpha and sigma_min = sigma(eps),
                   f(x, t) = c_skip(sigma) (alpha(eps) / alpha(t)) x + c_out(sigma) alpha(eps) F(c_in x, t),
                   c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),
                   c_out = (sigma - sigma_min) sd / sqrt(sd^2 + sigma^2),
                   c_in = 1 / sqrt(std^2 + alpha^2 sd^2), sd = sigma_data; so f(x, eps) = x exactly
                   (c_skip = 1, c_out = 0, alpha ratio exp(0) = 1, and x itself at t <= eps, so that no rounding of
                   those coefficients under jit leaves a 1e-7 residue): the boundary condition is built in.

As a score function the student is s = (alpha x0_hat - x) / std^2 (Tweedie inverted), so
`data_prediction` of it gives back x0_hat and `solvers.get("student")` samples it.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import flax.linen as nn
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array, batch_times, expand_to

PARAMETERISATIONS = ("v", "consistency")


class Student(eqx.Module):
    """A student network with its parameterisation: `denoise(x, t)` = x0_hat, `student(x, t)` = its score.

    Attributes:
      net: the Flax network (static).
      variables: its variables, {"params": ...}.
      sde: the forward SDE (a scalar kernel: VP, sub-VP, VE).
      kind: "v" (progressive distillation) or "consistency".
      eps: the consistency model's boundary time (f(x, eps) = x); unused by "v".
      sigma_data: the data's standard deviation in c_skip / c_out / c_in (EDM's 0.5).
    """

    net: nn.Module = eqx.field(static=True)
    variables: Any
    sde: SDE
    kind: str = eqx.field(static=True, default="v")
    eps: float = eqx.field(static=True, default=1e-3)
    sigma_data: float = eqx.field(static=True, default=0.5)

    def __check_init__(self):
        check_choice(self.kind, PARAMETERISATIONS, "student parameterisation")

    def _net(self, x_in: Array, t: Array) -> Array:
        out = self.net.apply(self.variables, self.sde.network_input(x_in), self.sde.noise_conditioning(t), train=False)
        return out.astype(x_in.dtype)

    def denoise(self, x: Array, t) -> Array:
        """x0_hat(x, t), like x (x: (B, *dims); t scalar or (B,)); for "consistency" f(x, t) ~ x_eps."""
        t = batch_times(t, x.shape[0], x.dtype)
        sde = self.sde
        alpha, std = sde.alpha(t), sde.std(t)
        if self.kind == "v":
            r = jnp.sqrt(alpha**2 + std**2)
            x_in = x / expand_to(r, x)
            return expand_to(alpha / r, x) * x_in - expand_to(std / r, x) * self._net(x_in, t)
        eps = jnp.full_like(t, self.eps)
        sd = self.sigma_data
        sigma, sigma_min = std / alpha, sde.std(eps) / sde.alpha(eps)
        c_skip = sd**2 / ((sigma - sigma_min) ** 2 + sd**2)
        c_out = (sigma - sigma_min) * sd / jnp.sqrt(sd**2 + sigma**2)
        c_in = 1.0 / jnp.sqrt(std**2 + alpha**2 * sd**2)
        ratio = jnp.exp(sde.log_alpha(eps) - sde.log_alpha(t))
        f_net = self._net(expand_to(c_in, x) * x, t)
        f = expand_to(c_skip * ratio, x) * x + expand_to(c_out * sde.alpha(eps), x) * f_net
        # c_skip = 1, c_out = 0 at eps make f(x, eps) = x up to rounding (XLA's fusions may compute
        # sigma(eps) twice in different ways: 6e-8 measured); at t <= eps it is x exactly.
        return jnp.where(expand_to(t <= eps, x), x, f)

    def __call__(self, x: Array, t) -> Array:
        """The score of the data prediction: (alpha x0_hat - x) / std^2."""
        t = batch_times(t, x.shape[0], x.dtype)
        alpha, std = expand_to(self.sde.alpha(t), x), expand_to(self.sde.std(t), x)
        return (alpha * self.denoise(x, t) - x) / std**2

    def with_variables(self, variables: Any) -> "Student":
        """The same student with other variables (the parameters being trained, or the EMA target)."""
        return Student(self.net, variables, self.sde, self.kind, self.eps, self.sigma_data)


__all__ = ["Student", "PARAMETERISATIONS"]
