"""The probability-flow ODE sampler, solved on device by diffrax.

dx/dt = f(x, t) - g(t)^2 s(x, t) / 2  (Song et al. 2021, eq. 13), integrated from x_T ~ prior
at T (or x_init at t_init) down to eps with any explicit diffrax solver: a fixed grid of
`n_steps` steps, each a diffrax `solver.step` inside the shared driver loop (`base.run_steps`),
or adaptive steps (PID controller, `rtol`, `atol`) when `n_steps` is None, one jitted
`diffrax.diffeqsolve`; `max_steps` bounds the adaptive loop and exceeding it raises.

NFE is computed from the solve's step statistics and the solver's Butcher tableau, and
matches the evaluations actually made (tested with a counting score function):
  fixed:    N s  (non-FSAL, s stages, or with a hook) or 1 + N (s - 1)  (FSAL)
  adaptive: A s  (non-FSAL, A attempted steps)       or 1 + A (s - 1)  (FSAL)
Rejected steps are attempts too. The first adaptive step is (eps - T) / 100 (no evaluations
spent on choosing it); for FSAL solvers we hand diffrax the first stage f(T, x_T) as its
initial solver state, so a rejected first step costs s - 1 like any other.
"""

from __future__ import annotations

import types
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.sde import probability_flow_drift
from score_sde.lookup import lookup
from score_sde.solvers.base import SampleInfo, StepSampler, check_n_steps, run_steps
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.timesteps import time_steps

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
        return lookup(ODE_SOLVERS, solver, "ODE solver", "solvers")()
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


class ODESampler(StepSampler):
    """Probability-flow ODE sampler.

    A fixed grid (`n_steps`) runs each diffrax solver step in the shared driver (`base.run_steps`,
    so a hook works); adaptive steps (n_steps None) are one `diffrax.diffeqsolve`.

    Attributes:
      solver: a name in `ODE_SOLVERS` (euler, heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8)
        or a diffrax solver instance.
      rtol, atol: tolerances of the PID step-size controller (adaptive solves).
      n_steps: None for adaptive steps; an int for that many uniform steps from T (or t_init) to eps.
      max_steps: bound on attempted steps of an adaptive solve; exceeding it raises at run time.
      eps: smallest time; None -> the SDE's convention (1e-3 VP/sub-VP, 1e-5 VE).
      denoise: apply Tweedie denoising at eps (one more evaluation); None (default): on where the SDE
        has a scalar kernel (VP, sub-VP, VE), off otherwise (CLD).
    """

    solver: str | diffrax.AbstractSolver = eqx.field(default="tsit5", static=True)
    rtol: float = eqx.field(default=1e-5, static=True)
    atol: float = eqx.field(default=1e-5, static=True)
    n_steps: int | None = eqx.field(default=None, static=True)
    max_steps: int = eqx.field(default=4096, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    denoise: bool | None = eqx.field(default=None, static=True)
    requires: ClassVar[frozenset] = frozenset({"reverse_sde"})

    def __check_init__(self):
        solver = get_ode_solver(self.solver)
        if self.n_steps is None and not isinstance(solver, diffrax.AbstractAdaptiveSolver):
            raise ValueError(f"solver {self.solver!r} has no error estimate, so it cannot take adaptive "
                             "steps: pass n_steps=<int> for a fixed grid, or pick an adaptive solver "
                             "(heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8)")
        check_n_steps(self.n_steps, "n_steps", allow_none=True)
        check_n_steps(self.max_steps, "max_steps")

    @property
    def final_denoise(self) -> bool:
        return self.denoise is not False

    def explicit_denoise(self) -> bool:
        return self.denoise is True

    @property
    def fixed_grid(self) -> bool:
        """Adaptive solves (n_steps None) are one `diffeqsolve`, not steps of the shared driver."""
        return self.n_steps is not None

    def total_nfe(self, hooked: bool = False) -> int:
        """Fixed grid: N s, or 1 + N (s - 1) when first-same-as-last stages are reused (not after a hook)."""
        solver = get_ode_solver(self.solver)
        n = self.n_steps * stages_and_fsal(solver)[0] if hooked else solve_nfe(solver, self.n_steps)
        return n + int(self.final_denoise)

    def grid(self, sde, t_start, t_end, dtype):
        return time_steps(sde, "time_uniform", t_start, t_end, self.n_steps, dtype), None

    def init(self, sde, score_fn, x, ts):
        return get_ode_solver(self.solver).init(_flow_term(sde, score_fn), ts[0], ts[1], x, None)

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        solver = get_ode_solver(self.solver)
        x, _, _, state, _ = solver.step(_flow_term(sde, score_fn), t, t_next, x, None, state, made_jump=hooked)
        return x, state

    def solve(self, sde, score_fn, x, eps, t_start=None, end_name: str = "eps"):
        """Integrates the probability-flow ODE from (t_start, x) to the time `eps`; t_start defaults to T.

        Either direction: `edit.encode` solves from eps up to T (`end_name` names the end in errors).

        Returns:
          (x_eps like x, nfe int32 scalar, step statistics dict with "num_steps" (attempted steps)
          and, adaptive, diffrax's other counts).
        """
        t0 = jnp.asarray(sde.T if t_start is None else t_start, x.dtype)
        if self.n_steps is not None:
            ts, _ = self.grid(sde, t0, eps, x.dtype)
            x = run_steps(self, jax.random.PRNGKey(0), sde, score_fn, x, ts)  # no randomness is used
            nfe = solve_nfe(get_ode_solver(self.solver), self.n_steps)
            return x, jnp.asarray(nfe, jnp.int32), {"num_steps": jnp.asarray(self.n_steps)}
        solver = get_ode_solver(self.solver)
        term = _flow_term(sde, score_fn)
        t1 = jnp.asarray(eps, x.dtype)
        solver_state = None
        if stages_and_fsal(solver)[1]:  # start with a valid first stage, so every attempted step costs stages - 1
            # (diffrax's explicit Runge-Kutta solver state is (first_step, f0), see AbstractRungeKutta.init)
            solver_state = (jnp.array(False), term.vf(t0, x, None))
        sol = diffrax.diffeqsolve(term, solver, t0, t1, (t1 - t0) / 100, x,
                                  stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
                                  max_steps=self.max_steps, throw=False, solver_state=solver_state)
        x_eps = _raise_if_failed(sol, self.max_steps, end_name)
        return x_eps, jnp.asarray(solve_nfe(solver, sol.stats["num_steps"]), jnp.int32), sol.stats

    def sample(self, key, sde, score_fn, shape, dtype, x_init=None, t_init=None, hook=None, progress=None,
               t_end=None):
        if self.n_steps is not None:
            return super().sample(key, sde, score_fn, shape, dtype, x_init, t_init, hook, progress, t_end)
        if hook is not None:
            raise ValueError("an adaptive ODE solve has no fixed steps to hook into; pass n_steps=<int> "
                             "to use a hook with the ode sampler")
        x, t_start, _ = self.start(key, sde, shape, dtype, x_init, t_init)
        eps = self.resolved_eps(sde)
        x, nfe, _ = self.solve(sde, score_fn, x, eps if t_end is None else t_end, t_start,
                               "eps" if t_end is None else "t_end")
        if t_end is None and self.denoises(sde):
            x = data_prediction(sde, score_fn, x, jnp.asarray(eps, dtype))
            nfe = nfe + 1
        return x, SampleInfo(nfe=nfe)


def _flow_term(sde, score_fn) -> diffrax.ODETerm:
    """The probability-flow drift as a diffrax term."""
    return diffrax.ODETerm(lambda t, y, args: probability_flow_drift(sde, score_fn, y, t))


def _raise_if_failed(sol: diffrax.Solution, max_steps: int, end_name: str = "eps"):
    """The final state, with a run-time error (raised by the jitted call) if the solve failed."""
    x = sol.ys[-1]
    msgs = ("",
            f"probability-flow ODE solve stopped after max_steps={max_steps} steps before reaching {end_name}; "
            "pass a larger max_steps (e.g. score_sde.solvers.get('ode', max_steps=...)) or looser rtol/atol",
            "probability-flow ODE solve failed (non-finite values or step size underflow); "
            "check the score function for NaN/inf")
    index = jnp.where(sol.result == diffrax.RESULTS.successful, 0,
                      jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, 1, 2))
    return eqx.branched_error_if(x, index != 0, index, msgs)


__all__ = ["ODESampler", "ODE_SOLVERS", "get_ode_solver", "stages_and_fsal", "solve_nfe"]
