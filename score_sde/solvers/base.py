"""The sampler interface and the one driver loop every fixed-grid sampler runs in.

A sampler is an immutable equinox Module holding its options (number of steps, eps,
tolerances...). It is called as

    x, info = sampler(key, sde, score_fn, shape)                       # from the prior at T
    x, info = sampler(key, sde, score_fn, x_init=x_t, t_init=0.5)      # from x_t at t = 0.5
    x, info = sampler(key, sde, score_fn, x_init=x_t, t_init=0.5, t_end=0.2)   # x at t = 0.2 (partial solve)

and owns its time grid; the SDE only describes the process. The whole solve runs inside
one `eqx.filter_jit`: options that are Python ints/strings/bools are static, arrays
(x_init, t_init and the arrays inside score_fn / sde pytrees) are traced, so a second call
with the same sampler and shapes does not recompile.

Fixed-grid samplers (`StepSampler`) split like diffrax's solvers: the sampler gives its grid
(`grid`), its extra state (`init`) and one step (`step`); `run_steps` is the one loop
(`lax.scan`, one per run of equal static step kinds) that drives all of them, with per-step keys fold_in(key, i) and an optional
hook(x, t_next, key) -> x applied after every step (inpainting projections, guidance
resets...) and, when asked, a host callback reporting finished steps (`progress`, off by default:
`sampler(..., progress=fn)` calls fn(steps_done, n_steps) on the host through `jax.debug.callback`
after every step, at most 10 times a solve). `start` is the one place the starting point is drawn: x_T from
split(key)[0], so every sampler called with the same key starts from the same x_T.

A fixed-grid solve is `begin` (start, grid, state), `advance` over the pieces of `chunks` (each a
`run_range`: one `lax.scan` over steps start .. stop - 1, start and stop traced) and `finish` (the final
denoising of a full solve); `sample` runs them in one jit, a driver may run them as separate calls
(to stop between them). `single_step` is one step from t to s, for training code.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from score_sde.sde import CAPABILITIES, SDE, Array, ScoreFn
from score_sde.solvers.data_prediction import data_prediction

# hook(x, t_next, key) -> x, applied after every step of a fixed-grid sampler.
Hook = Callable[[Array, Array, Array], Array]
# progress(steps_done, n_steps), called on the host after every step of a fixed-grid sampler.
Progress = Callable[[int, int], None]
# At most this many progress reports per solve (every ceil(n / 10)-th step and the last one): on an
# H200 each report costs ~0.3-2 ms of GPU idle (benchmarks/results/progress_overhead_h200.md).
MAX_PROGRESS_REPORTS = 10


class SampleInfo(NamedTuple):
    """What a solve reports besides the samples.

    Attributes:
      nfe: number of score evaluations actually made (int32 scalar array); adaptive solvers
        report their real count.
      velocity: for an SDE whose state carries more than the data (CLD's (x, v)), the final
        auxiliary part (B, *dims) (the sampler returns the data part x); None otherwise.
    """

    nfe: Array
    velocity: Array | None = None


def check_n_steps(value, name: str = "n_steps", allow_none: bool = False) -> None:
    """Raises ValueError unless value is a positive int (or None when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        none = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {none}a positive int, got {value!r}")


class Sampler(eqx.Module):
    """Base class: subclasses implement `sample` (traced inside jit) and declare `eps`.

    `requires` names the SDE capabilities (`score_sde.sde.CAPABILITIES`) the sampler needs with
    its most permissive options; `required_capabilities()` those of this instance. The default is
    a scalar Gaussian kernel (alpha(t), std(t)); samplers that only integrate the reverse SDE or
    the probability-flow ODE declare less and so also run CLD.
    """

    requires: ClassVar[frozenset] = frozenset({"scalar_kernel"})
    # The options under which the sampler needs only `requires` (for error messages), e.g. "denoise=False".
    requires_options: ClassVar[str] = ""

    def required_capabilities(self) -> frozenset:
        """The SDE capabilities this sampler, with its options, needs."""
        return self.requires

    @abc.abstractmethod
    def sample(self, key: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], dtype,
               x_init: Array | None = None, t_init: Array | None = None,
               hook: Hook | None = None, progress: Progress | None = None,
               t_end: Array | None = None) -> tuple[Array, SampleInfo]:
        """Draws samples of shape `shape` = (B, *dims) from the model p_eps, or x at t_end (traced)."""

    def resolved_eps(self, sde: SDE) -> float:
        """The smallest time: the sampler's `eps` option if set, else the SDE's convention
        (1e-3 VP / sub-VP, 1e-5 VE)."""
        eps = getattr(self, "eps", None)
        return sde.sampling_eps if eps is None else float(eps)

    def __call__(self, key: Array, sde: SDE, score_fn: ScoreFn, shape=None, dtype=None, *,
                 x_init: Array | None = None, t_init=None, t_end=None, hook: Hook | None = None,
                 progress: Progress | None = None):
        """Runs the sampler.

        Args:
          key: PRNG key. The starting noise x_T comes from split(key)[0] for every sampler.
          sde: the forward SDE.
          score_fn: score_fn(x, t) -> like x, x: (B, *dims), t: (B,).
          shape: (B, *dims); may be omitted when x_init is given.
          dtype: float dtype (default float32, or x_init's dtype).
          x_init: start the reverse process from this (B, *dims) state instead of a prior draw.
          t_init: the time of x_init, eps < t_init <= T (default T). SDEdit's entry point.
          t_end: stop at this time, 0 < t_end < t_init, and return x at t_end: a partial solve of the
            sampler's `n_steps` steps between t_init and t_end, with no final denoising (nor EDM's
            last step to sigma = 0). Default: a full solve to eps (with the final denoising where
            the sampler has one). Traced, so new values do not recompile.
          hook: hook(x, t_next, key) -> x applied after each step (fixed-grid samplers). A hook
            that is a jax pytree (e.g. an equinox Module) is traced; a plain function is static,
            so a new function object recompiles.
          progress: progress(steps_done, n_steps) called on the host after each step of a
            fixed-grid sampler (at most 10 times: every ceil(n / 10)-th step and the last) (`jax.debug.callback`; under pmap once per device). Off by default;
            static, so a new function object recompiles. The adaptive `ode` does not call it.

        Returns:
          (x (B, *dims), SampleInfo). For an SDE whose state carries more than the data (CLD),
          x is the data part and `info.velocity` the rest; x_init is then a full state
          (`sde.state_shape`) and `shape` the data shape.
        """
        shape, dtype, x_init, t_init, t_end = self.check_call(sde, shape, dtype, x_init, t_init, t_end)
        return _sample_jit(self, key, sde, score_fn, shape, dtype, x_init, t_init, hook, progress, t_end)

    def check_call(self, sde: SDE, shape, dtype, x_init, t_init, t_end):
        """Validates a call's SDE, shape and times before tracing (ValueError naming what is wrong);
        returns (shape, dtype, x_init, t_init, t_end) with the arrays in `dtype`."""
        check_capabilities(self, sde)
        shape, dtype = _check_start(self, sde, shape, dtype, x_init, t_init, t_end)
        as_dtype = lambda a: None if a is None else jnp.asarray(a, dtype)  # noqa: E731
        return shape, dtype, as_dtype(x_init), as_dtype(t_init), as_dtype(t_end)

    def start(self, key: Array, sde: SDE, shape: tuple[int, ...], dtype, x_init: Array | None,
              t_init: Array | None) -> tuple[Array, Array, Array]:
        """(x at the first time, the first time, the key for the loop).

        x is a prior draw from split(key)[0] at T unless x_init is given (at t_init, default T).
        """
        k_prior, k_loop = jax.random.split(key)
        x = sde.prior_sampling(k_prior, shape, dtype) if x_init is None else x_init
        t_start = jnp.asarray(sde.T if t_init is None else t_init, dtype)
        return x, t_start, k_loop


def _check_start(sampler, sde, shape, dtype, x_init, t_init, t_end=None):
    """Validates shape / x_init / t_init / t_end before tracing; returns (shape, dtype)."""
    if x_init is not None:
        x_shape = sde.data_shape(tuple(int(s) for s in jnp.shape(x_init)))
        if shape is not None and tuple(int(s) for s in shape) != x_shape:
            raise ValueError(f"shape {tuple(shape)} differs from x_init's shape {x_shape}; pass one of them")
        shape = x_shape
        if dtype is None and jnp.issubdtype(jnp.result_type(x_init), jnp.floating):
            dtype = jnp.result_type(x_init)
    elif t_init is not None:
        raise ValueError("t_init needs x_init: the state to start from at that time")
    if shape is None:
        raise ValueError("give the sample shape (B, *dims), or x_init to start from")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be (B, *dims) with at least one data dim, got {shape}")
    eps = getattr(sampler, "eps", None)
    if eps is not None and not isinstance(eps, jax.core.Tracer) and not 0 < float(eps) < sde.T:
        raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}) of the SDE, got {eps}")
    if t_init is not None and not isinstance(t_init, jax.core.Tracer):
        t, eps = float(jnp.asarray(t_init)), sampler.resolved_eps(sde)
        if not eps < t <= sde.T:
            raise ValueError(f"t_init must lie in (eps, T] = ({eps}, {sde.T}], got {t}")
    if t_end is not None and not isinstance(t_end, jax.core.Tracer):
        if jnp.ndim(t_end) != 0:
            raise ValueError(f"t_end must be a scalar time, got shape {jnp.shape(t_end)}")
        end = float(jnp.asarray(t_end))
        start = sde.T if t_init is None or isinstance(t_init, jax.core.Tracer) else float(jnp.asarray(t_init))
        if not 0.0 < end < start:
            raise ValueError(f"t_end must lie in (0, t_init) = (0, {start}): the solve runs from t_init down to "
                             f"t_end; got {end}")
    return shape, jnp.dtype(jnp.float32 if dtype is None else dtype)


def check_score_shape(score_fn: ScoreFn, x: Array, expected: tuple[int, ...] | None = None) -> None:
    """Raises ValueError unless score_fn(x, t) has shape `expected` (default x's shape; checked at
    trace time, no evaluation). A CLD state (B, 2, *dims) expects (B, *dims) (`sde.score_shape`).

    A score of another shape, e.g. (B, 1) for x (B, D), would broadcast silently in the update.
    An empty batch (B = 0) is refused too: there is nothing to sample.
    """
    if x.shape[0] == 0:
        raise ValueError(f"the batch size is 0 (shape {tuple(x.shape)}); ask for at least one example")
    t = jax.ShapeDtypeStruct(x.shape[:1], x.dtype)
    out = jax.eval_shape(score_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), t)
    got = getattr(out, "shape", None)
    want = tuple(x.shape) if expected is None else tuple(expected)
    if got != want:
        what = "a score has the shape of x" if expected is None else f"this SDE's score has shape {want}"
        raise ValueError(f"score_fn(x, t) returned shape {got} for x of shape {tuple(x.shape)}; {what}")


def check_capabilities(sampler: Sampler, sde) -> None:
    """Raises ValueError, in one line, when the SDE lacks a capability the sampler needs; the message
    names the missing capability and the registered samplers that can run this SDE."""
    missing = sorted(sampler.required_capabilities() - sde.capabilities)
    if not missing:
        return
    from score_sde.solvers.registry import SAMPLERS  # the table imports this module

    ok = [name + (f" ({cls.requires_options})" if cls.requires_options else "")
          for name, cls in sorted(SAMPLERS.items()) if cls.requires <= sde.capabilities]
    raise ValueError(f"sampler {type(sampler).__name__} with these options needs {', '.join(missing)} "
                     f"({'; '.join(CAPABILITIES[m] for m in missing)}), which {type(sde).__name__} does "
                     f"not offer; samplers that can run {type(sde).__name__}: {', '.join(ok)}")


@eqx.filter_jit
def _sample_jit(sampler, key, sde, score_fn, shape, dtype, x_init, t_init, hook, progress=None, t_end=None):
    u, info = sampler.sample(key, sde, checked_score(sde, score_fn, shape, dtype), shape, dtype, x_init, t_init,
                             hook, progress, t_end=t_end)
    return data_and_info(sde, u, info)


def checked_score(sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], dtype) -> ScoreFn:
    """score_fn checked for the data shape (B, *dims) (`check_score_shape`, at trace time) and cast to
    the sampling dtype: what every sampler's `sample` is given."""
    state_shape = sde.state_shape(shape)
    check_score_shape(score_fn, jax.ShapeDtypeStruct(state_shape, dtype), sde.score_shape(state_shape))
    return SameDtypeScore(score_fn)


def data_and_info(sde: SDE, u: Array, info: SampleInfo) -> tuple[Array, SampleInfo]:
    """(the data part of a final state, info with the auxiliary part as `velocity`), as samplers return."""
    return sde.data_part(u), info._replace(velocity=sde.velocity_part(u))


class SameDtypeScore(eqx.Module):
    """A score function whose output has x's dtype (a float64 score in a float32 solve is cast)."""

    score_fn: ScoreFn

    def __call__(self, x: Array, t: Array) -> Array:
        return jnp.asarray(self.score_fn(x, t)).astype(x.dtype)


class Chunk(NamedTuple):
    """A piece of a fixed-grid solve (`StepSampler.chunks`): steps start .. stop - 1, all of kind
    `kind`, in a program of `length` steps; `masked`: length may exceed stop - start (pass stop to
    `advance`)."""

    kind: Any
    start: int
    stop: int
    length: int
    masked: bool


class Solve(eqx.Module):
    """A fixed-grid solve between chunks of steps (`StepSampler.begin` / `advance` / `finish`).

    Attributes:
      x: the state after the steps done so far, (B, *dims) (CLD: the full state).
      state: the sampler's carried state (`StepSampler.init`), or None.
      key: the loop key; step i uses fold_in(key, i).
      ts: (N + 1,) the grid's times; inputs: its per-step inputs (leading dimension N), or None.
      partial: whether the solve stops at a given t_end (static; no final denoising).
    """

    x: Array
    state: Any
    key: Array
    ts: Array
    inputs: Any
    partial: bool = eqx.field(static=True, default=False)


class StepSampler(Sampler):
    """A sampler on a fixed time grid, written as grid / init / step and run by `run_steps`.

    Subclasses implement `grid`, `step` and `total_nfe`, and `init` when a step needs state
    beyond x (multistep history, a solver's cached evaluation). `final_denoise` says whether
    Tweedie's x0_hat at eps ends the solve. Adding such a sampler is one file: these methods
    and a row in `registry.SAMPLERS`.

    The same solve can also run in chunks of steps, each a separate jitted call (`begin`, then
    `advance` for each of `chunks(k)`, then `finish`), e.g. to stop between chunks; the result is
    that of the one-call solve. `single_step` is one step from t to s (a distillation teacher).
    """

    @abc.abstractmethod
    def grid(self, sde: SDE, t_start: Array, t_end: float, dtype) -> tuple[Array, Any]:
        """(ts, inputs): ts the (N + 1,) decreasing times from t_start to the end of the solve
        (x after step i lives at ts[i + 1]); inputs a pytree of per-step values with leading
        dimension N (e.g. the order of each step), or None."""

    @property
    def fixed_grid(self) -> bool:
        """Whether the solve runs on a fixed grid of steps (so `begin` / `advance` / `finish` apply)."""
        return True

    def partial_grid(self, sde: SDE, t_start: Array, t_end: Array, dtype) -> tuple[Array, Any]:
        """`grid` of a partial solve, which ends at t_end itself (default: `grid`; EDM's ends at sigma = 0
        otherwise)."""
        return self.grid(sde, t_start, t_end, dtype)

    def init(self, sde: SDE, score_fn: ScoreFn, x: Array, ts: Array) -> Any:
        """The state carried between steps besides x (default: none)."""
        return None

    def step_kinds(self) -> list | None:
        """A static kind per step (e.g. its order), or None when every step is alike.

        `run_steps` runs each maximal run of equal kinds as one `lax.scan` and passes the kind to
        `step` as a Python value, so steps that differ in structure (a lower-order warm-up, a
        final Euler step) need no `lax.cond` / `lax.switch` inside the loop.
        """
        return None

    def partial_step_kinds(self) -> list | None:
        """`step_kinds` of a partial solve (default: the same)."""
        return self.step_kinds()

    @abc.abstractmethod
    def step(self, sde: SDE, score_fn: ScoreFn, x: Array, state: Any, t: Array, t_next: Array,
             inputs: Any, key: Array, kind: Any = None, hooked: bool = False) -> tuple[Array, Any]:
        """One step x at t -> x at t_next (< t); returns (x_next, state).

        `inputs` is this step's slice of the grid's per-step inputs, `kind` its entry of
        `step_kinds()`. `hooked` is True when a hook may change x between steps, so values
        cached at x (e.g. a first-same-as-last stage) must not be reused.
        """

    @abc.abstractmethod
    def total_nfe(self, hooked: bool = False) -> int:
        """Score evaluations per call, final denoising included (static)."""

    def partial_nfe(self, hooked: bool = False) -> int:
        """Score evaluations of a partial solve (to a given t_end: no final denoising)."""
        return self.total_nfe(hooked) - int(self.final_denoise)

    @property
    def final_denoise(self) -> bool:
        """Whether the solve ends with Tweedie's x0_hat at eps (one more evaluation) on an SDE with a
        scalar kernel; `denoises(sde)` says whether it does on a given SDE."""
        return False

    def explicit_denoise(self) -> bool:
        """Whether the final denoising was asked for explicitly (True) rather than by default (None:
        on where the SDE has a scalar kernel, off otherwise). Samplers with a `denoise` option of
        default None override this."""
        return False

    def denoises(self, sde: SDE) -> bool:
        """Whether a full solve on `sde` ends with Tweedie's x0_hat: `final_denoise`, except that a
        default (not explicit) denoising is off on an SDE without a scalar kernel (CLD)."""
        return self.final_denoise and (self.explicit_denoise() or "scalar_kernel" in sde.capabilities)

    def required_capabilities(self) -> frozenset:
        """The class's needs, plus a scalar kernel for an explicitly requested final Tweedie denoising."""
        extra = frozenset({"scalar_kernel"}) if self.final_denoise and self.explicit_denoise() else frozenset()
        return self.requires | extra

    def sample(self, key, sde, score_fn, shape, dtype, x_init=None, t_init=None, hook=None, progress=None,
               t_end=None):
        solve = self.begin(key, sde, score_fn, shape, dtype, x_init, t_init, t_end)
        for piece in self.chunks(solve.ts.shape[0] - 1, None, solve.partial):
            solve = self.advance(solve, sde, score_fn, piece.start, piece.length, piece.kind, hook, progress)
        return self.finish(solve, sde, score_fn, hook is not None)

    def begin(self, key: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], dtype,
              x_init: Array | None = None, t_init: Array | None = None, t_end: Array | None = None) -> Solve:
        """The start of a solve (traced): x_T (or x_init at t_init), the grid to t_end (default eps), the
        carried state. Validate the arguments first with `check_call` (as `__call__` does)."""
        x, t_start, k_loop = self.start(key, sde, shape, dtype, x_init, t_init)
        if t_end is None:
            ts, inputs = self.grid(sde, t_start, self.resolved_eps(sde), dtype)
        else:
            ts, inputs = self.partial_grid(sde, t_start, jnp.asarray(t_end, dtype), dtype)
        return Solve(x, self.init(sde, score_fn, x, ts), k_loop, ts, inputs, partial=t_end is not None)

    def chunks(self, n: int, chunk_steps: int | None = None, partial: bool = False) -> list[Chunk]:
        """The n steps of a solve (`solve.ts.shape[0] - 1`) as pieces for `advance`, in order (static).

        Without `chunk_steps`: one piece per run of equal `step_kinds` (the one-call solve). With it, a
        run longer than chunk_steps becomes pieces of chunk_steps steps, the last one masked (its
        program has chunk_steps steps, those past the run skip), so every piece of a kind shares one
        compiled program with its start and stop traced: a solve compiles one program per kind (and
        length of a short run), however many pieces.
        """
        kinds = self.partial_step_kinds() if partial else self.step_kinds()
        out = []
        for kind, start, stop in _runs(kinds, n):
            if chunk_steps is None or stop - start <= chunk_steps:
                out.append(Chunk(kind, start, stop, stop - start, False))
            else:
                out.extend(Chunk(kind, s, min(s + chunk_steps, stop), chunk_steps, True)
                           for s in range(start, stop, chunk_steps))
        return out

    def advance(self, solve: Solve, sde: SDE, score_fn: ScoreFn, start, length: int, kind: Any = None,
                hook: Hook | None = None, progress: Progress | None = None, stop=None) -> Solve:
        """Steps start .. start + length - 1 of the solve, or start .. stop - 1 when `stop` is given (a
        masked piece of `chunks`); traced: `start` and `stop` may be traced, `length` and `kind` are static."""
        x, state = run_range(self, solve.key, sde, score_fn, (solve.x, solve.state), solve.ts, solve.inputs,
                             start, length, kind, hook, progress, stop)
        return Solve(x, state, solve.key, solve.ts, solve.inputs, partial=solve.partial)

    def finish(self, solve: Solve, sde: SDE, score_fn: ScoreFn, hooked: bool = False) -> tuple[Array, SampleInfo]:
        """(x, SampleInfo) of a solve whose steps are done: Tweedie's denoising at eps for a full solve
        of a denoising sampler (`denoises(sde)`), nothing more for a partial one (traced)."""
        x = solve.x
        if solve.partial:
            nfe = self.partial_nfe(hooked)
        else:
            nfe = self.total_nfe(hooked) - int(self.final_denoise)
            if self.denoises(sde):
                x = data_prediction(sde, score_fn, x, jnp.asarray(self.resolved_eps(sde), x.dtype)).astype(x.dtype)
                nfe += 1
        return x, SampleInfo(nfe=jnp.asarray(nfe, jnp.int32))

    def with_steps(self, n_steps: int) -> "StepSampler":
        """This sampler with `n_steps` steps (default: its `n_steps` option replaced); for `single_step`."""
        return dataclasses.replace(self, n_steps=n_steps)

    def single_step(self, sde: SDE, score_fn: ScoreFn, x: Array, t, s, key: Array | None = None,
                    stop_gradient: bool = True) -> Array:
        """One step of this sampler from time t down to s < t: its first step of a partial solve
        with one step (multistep samplers: the first-order start; EDM: one Heun step; pc: corrector
        then predictor). No final denoising. Jit-able; for a distillation teacher inside a training step.

        Args:
          x: (B, *dims) states at t (CLD: the full state).
          t, s: scalars, or (B,) per-example times (then each example takes its own step, `jax.vmap`).
          key: PRNG key of a stochastic step (default PRNGKey(0); deterministic samplers ignore it).
          stop_gradient: return a constant for autodiff (a teacher's target); False lets gradients through.

        Returns:
          x at s, like x.
        """
        one = self.with_steps(1)
        key = jax.random.PRNGKey(0) if key is None else key
        t, s = jnp.asarray(t, x.dtype), jnp.asarray(s, x.dtype)

        def from_t(x, t, s, key):
            ts, inputs = one.partial_grid(sde, t, s, x.dtype)
            kinds = one.partial_step_kinds()
            kind = None if kinds is None else kinds[0]
            inp = jax.tree.map(lambda a: a[0], inputs)
            x_next, _ = one.step(sde, score_fn, x, one.init(sde, score_fn, x, ts), ts[0], ts[1], inp, key, kind=kind)
            return x_next.astype(x.dtype)

        if t.ndim == 0 and s.ndim == 0:
            out = from_t(x, t, s, key)
        else:
            b = x.shape[0]
            t, s = jnp.broadcast_to(t, (b,)), jnp.broadcast_to(s, (b,))
            each = lambda xi, ti, si, ki: from_t(xi[None], ti, si, ki)[0]  # noqa: E731
            out = jax.vmap(each)(x, t, s, jax.random.split(key, b))
        return lax.stop_gradient(out) if stop_gradient else out


def run_steps(sampler: StepSampler, key: Array, sde: SDE, score_fn: ScoreFn, x: Array, ts: Array,
              inputs: Any = None, hook: Hook | None = None, progress: Progress | None = None,
              partial: bool = False) -> Array:
    """The driver: sampler.step over the grid ts, then the hook, in `lax.scan`s; returns x at ts[-1].

    One scan per run of equal `step_kinds()` (`partial_step_kinds()` when `partial`; one scan when
    the sampler has none). Step i gets the keys split(fold_in(key, i)) (step, hook), so every step's
    randomness is reproducible and independent of how the steps are grouped. `progress`, if given,
    is called on the host as progress(i + 1, n) after step i, for every ceil(n / MAX_PROGRESS_REPORTS)-th
    step and the last one (each call waits for the host).
    """
    carry = (x, sampler.init(sde, score_fn, x, ts))
    for piece in sampler.chunks(ts.shape[0] - 1, None, partial):
        carry = run_range(sampler, key, sde, score_fn, carry, ts, inputs, piece.start, piece.length, piece.kind,
                          hook, progress)
    return carry[0]


def run_range(sampler: StepSampler, key: Array, sde: SDE, score_fn: ScoreFn, carry: tuple[Array, Any], ts: Array,
              inputs: Any, start, length: int, kind: Any = None, hook: Hook | None = None,
              progress: Progress | None = None, stop=None) -> tuple[Array, Any]:
    """Steps start .. start + length - 1 of the grid ts (all of kind `kind`) in one `lax.scan`; carry
    is (x, state). `start` may be traced (the times and inputs are indexed dynamically), so every
    range of one length shares one compiled program. With `stop` (may be traced), steps from stop on
    are skipped (`lax.cond`): a masked piece of `StepSampler.chunks`."""
    n = ts.shape[0] - 1
    stride = max(1, -(-n // MAX_PROGRESS_REPORTS))
    hooked = hook is not None
    start = jnp.asarray(start, jnp.int32)

    def one(carry, i):
        x, state = carry
        t, t_next = ts[i], ts[i + 1]
        inp = jax.tree.map(lambda a: a[i], inputs)
        k_step, k_hook = jax.random.split(jax.random.fold_in(key, i))
        x_next, state = sampler.step(sde, score_fn, x, state, t, t_next, inp, k_step, kind=kind, hooked=hooked)
        if hooked:
            x_next = hook(x_next, t_next, k_hook)
        if progress is not None:  # every stride-th step and the last: at most MAX_PROGRESS_REPORTS calls
            report = ((i + 1) % stride == 0) | (i == n - 1)
            lax.cond(report, lambda a: jax.debug.callback(functools.partial(_report_progress, progress, n=n), *a),
                     lambda a: None, (i, x_next[(0,) * x_next.ndim]))
        return x_next.astype(x.dtype), state  # the requested dtype, whatever a step computes in

    def body(carry, i):
        if stop is None:
            return one(carry, i), None
        return lax.cond(i < stop, one, lambda c, i: c, carry, i), None

    carry, _ = lax.scan(body, carry, start + jnp.arange(length, dtype=jnp.int32))
    return carry


def _report_progress(progress: Progress, i, _after, n: int) -> None:
    """Host side of the progress callback (`_after`, an element of the new state, orders the call
    after the step's computation)."""
    progress(int(i) + 1, n)


def _runs(kinds: list | None, n: int) -> list[tuple[Any, int, int]]:
    """Maximal runs of equal kinds as (kind, start, stop); [(None, 0, n)] without kinds."""
    if kinds is None:
        return [(None, 0, n)]
    if len(kinds) != n:
        raise ValueError(f"step_kinds() gave {len(kinds)} kinds for a grid of {n} steps")
    out = []
    for i, k in enumerate(kinds):
        if out and out[-1][0] == k:
            out[-1] = (k, out[-1][1], i + 1)
        else:
            out.append((k, i, i + 1))
    return out


__all__ = ["Hook", "Progress", "Sampler", "SampleInfo", "Chunk", "Solve", "StepSampler", "check_capabilities",
           "check_n_steps", "check_score_shape", "checked_score", "data_and_info", "run_range", "run_steps"]
