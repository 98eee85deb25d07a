"""The probability-flow ODE sampler, solved on device by diffrax.

dx/dt = f(x, t) - g(t)^2 s(x, t) / 2  (Song et al. 2021, eq. 13), integrated from x_T ~ prior
at T down to eps with any explicit diffrax solver: a fixed grid of `n_steps` steps, or
adaptive steps (PID controller, `rtol`, `atol`) when `n_steps` is None. The whole solve is one
jitted `diffrax.diffeqsolve`; `max_steps` bounds the adaptive loop and exceeding it raises.

NFE is computed from the solve's step statistics and the solver's Butcher tableau, and
matches the evaluations actually made (tested with a counting score function):
  fixed:    N s  (non-FSAL, s stages)               or 1 + N (s - 1)  (FSAL)
  adaptive: A s  (non-FSAL, A attempted steps)       or 1 + A (s - 1)  (FSAL)
Rejected steps are attempts too. The first adaptive step is (eps - T) / 100 (no evaluations
spent on choosing it); for FSAL solvers we hand diffrax the first stage f(T, x_T) as its
initial solver state, so a rejected first step costs s - 1 like any other.
"""

from __future__ import annotations

import types

import diffrax
import equinox as eqx
import jax.numpy as jnp

from score_sde.sde import probability_flow_drift
from score_sde.solvers.base import SampleInfo, Sampler, resolve_eps
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.pc import time_grid

# name -> diffrax explicit ODE solver class (read-only).
ODE_SOLVERS: types.MappingProxyType = types.MappingProxyType({
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "midpoint": diffrax.Midpoint,
    "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3,
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
})


def get_ode_solver(solver) -> diffrax.AbstractSolver:
    """A diffrax solver from a name in ODE_SOLVERS or an instance (Euler or an explicit Runge–Kutta)."""
    if isinstance(solver, str):
        if solver not in ODE_SOLVERS:
            raise ValueError(f"unknown ODE solver {solver!r}; valid solvers: {', '.join(ODE_SOLVERS)} "
                             "(or pass a diffrax.AbstractERK / diffrax.Euler instance)")
        return ODE_SOLVERS[solver]()
    if isinstance(solver, (diffrax.Euler, diffrax.AbstractERK)):
        return solver
    raise ValueError(f"solver must be a name ({', '.join(ODE_SOLVERS)}) or a diffrax.Euler / "
                     f"diffrax.AbstractERK instance, got {solver!r}")


def stages_and_fsal(solver: diffrax.AbstractSolver) -> tuple[int, bool]:
    """Vector-field evaluations per step and whether the last stage is reused (first-same-as-last)."""
    if isinstance(solver, diffrax.Euler):
        return 1, False
    return len(solver.tableau.c) + 1, bool(solver.tableau.fsal)


def solve_nfe(solver: diffrax.AbstractSolver, attempts):
    """Vector-field evaluations of a solve with `attempts` attempted steps (rejected ones included).

    s per step, or s - 1 per step plus the initial f(t0, y0) for first-same-as-last tableaus.
    Used by this sampler and by `score_sde.likelihood`; both are checked against counted
    evaluations in the tests.
    """
    stages, fsal = stages_and_fsal(solver)
    return attempts * (stages - 1) + 1 if fsal else attempts * stages


class ODESampler(Sampler):
    """Probability-flow ODE sampler.

    Attributes:
      solver: a name in `ODE_SOLVERS` (euler, heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8)
        or a diffrax solver instance.
      rtol, atol: tolerances of the PID step-size controller (adaptive solves).
      n_steps: None for adaptive steps; an int for that many uniform steps from T to eps.
      max_steps: bound on attempted steps of an adaptive solve; exceeding it raises at run time.
      eps: smallest time; None -> the SDE's convention (1e-3 VP/sub-VP, 1e-5 VE).
      denoise: apply Tweedie denoising at eps (one more evaluation).
    """

    solver: str | diffrax.AbstractSolver = eqx.field(default="tsit5", static=True)
    rtol: float = eqx.field(default=1e-5, static=True)
    atol: float = eqx.field(default=1e-5, static=True)
    n_steps: int | None = eqx.field(default=None, static=True)
    max_steps: int = eqx.field(default=4096, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    denoise: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        solver = get_ode_solver(self.solver)
        if self.n_steps is None:
            if not isinstance(solver, diffrax.AbstractAdaptiveSolver):
                raise ValueError(f"solver {self.solver!r} has no error estimate, so it cannot take adaptive "
                                 "steps: pass n_steps=<int> for a fixed grid, or pick an adaptive solver "
                                 "(heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8)")
        elif not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(f"n_steps must be None (adaptive) or a positive int, got {self.n_steps!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")

    def solve(self, sde, score_fn, x, eps):
        """Integrates the probability-flow ODE from (T, x) to eps.

        Returns:
          (x_eps like x, nfe int32 scalar, diffrax step statistics dict).
        """
        solver = get_ode_solver(self.solver)
        _, fsal = stages_and_fsal(solver)
        term = diffrax.ODETerm(lambda t, y, args: probability_flow_drift(sde, score_fn, y, t))
        t0, t1 = jnp.asarray(sde.T, x.dtype), jnp.asarray(eps, x.dtype)
        if self.n_steps is None:
            controller = diffrax.PIDController(rtol=self.rtol, atol=self.atol)
            dt0, max_steps = (t1 - t0) / 100, self.max_steps
        else:
            controller = diffrax.StepTo(ts=time_grid(sde.T, eps, self.n_steps, x.dtype))
            dt0, max_steps = None, self.n_steps
        solver_state = None
        if fsal:  # start with a valid first stage, so that every attempted step costs stages - 1
            # (diffrax's explicit Runge-Kutta solver state is (first_step, f0), see AbstractRungeKutta.init)
            solver_state = (jnp.array(False), term.vf(t0, x, None))
        sol = diffrax.diffeqsolve(term, solver, t0, t1, dt0, x, stepsize_controller=controller,
                                  max_steps=max_steps, throw=False, solver_state=solver_state)
        x_eps = _raise_if_failed(sol, max_steps)
        return x_eps, jnp.asarray(solve_nfe(solver, sol.stats["num_steps"]), jnp.int32), sol.stats

    def sample(self, key, sde, score_fn, shape, dtype):
        eps = resolve_eps(self.eps, sde)
        x = sde.prior_sampling(key, shape, dtype)
        x, nfe, _ = self.solve(sde, score_fn, x, eps)
        if self.denoise:
            x = data_prediction(sde, score_fn, x, jnp.asarray(eps, dtype))
            nfe = nfe + 1
        return x, SampleInfo(nfe=nfe)


def _raise_if_failed(sol: diffrax.Solution, max_steps: int):
    """The final state, with a run-time error (raised by the jitted call) if the solve failed."""
    x = sol.ys[-1]
    msgs = ("",
            f"probability-flow ODE solve stopped after max_steps={max_steps} steps before reaching eps; "
            "pass a larger max_steps (e.g. score_sde.solvers.get('ode', max_steps=...)) or looser rtol/atol",
            "probability-flow ODE solve failed (non-finite values or step size underflow); "
            "check the score function for NaN/inf")
    index = jnp.where(sol.result == diffrax.RESULTS.successful, 0,
                      jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, 1, 2))
    return eqx.branched_error_if(x, index != 0, index, msgs)


__all__ = ["ODESampler", "ODE_SOLVERS", "get_ode_solver", "stages_and_fsal", "solve_nfe"]
