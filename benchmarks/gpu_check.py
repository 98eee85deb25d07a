"""A prepared check for a lent accelerator: CIFAR-10 DDPM++ training and sampling speed in one script.

    python -m benchmarks.gpu_check          # paper-size DDPM++ (configs/cifar10_vp.py), batch 128; more than 5 min on one H200 (train compile alone 99 s): give it --budget 500 or more
    python -m benchmarks.gpu_check --smoke  # nf=16, ch_mult (1, 2), 8x8 images, batch 4, few steps; ~1 min on CPU
    python -m benchmarks.gpu_check --section=train|sample|likelihood|memory   # one part, <= 4 min (benchmarks/gpu_parts.py)
    python -m benchmarks.gpu_check --sections=memory,train,sample,likelihood --budget-s=840   # parts in order, under a budget

Sections (each one prints its error and the script goes on if it fails):
  devices      what JAX sees;
  train        the real pmapped training step of score_sde.drivers.train (continuous DSM, DDPM++, VP SDE) on
               synthetic data: step time, steps/s, images/s;
  score_eval   one network score evaluation at the sampling batch: the baseline every sampler is set against;
  sample:*     euler_maruyama-1000, pc-1000 (reverse diffusion + Langevin), ode (dopri5, rtol = atol = 1e-5),
               dpm_solver-20, edm_heun-18 on the DDPM++ score (`score_sde.models.score_fn`, random init):
               samples/s, NFE, and wall / (NFE x one score eval);
  likelihood   log-likelihood of a batch (Hutchinson, tsit5, rtol = atol = 1e-5): seconds per batch, NFE;
  host_vs_device  the probability-flow ODE on device (diffrax dopri5) vs the 2021 way, scipy RK45 on the
               host with one device round trip per evaluation, same tolerances: the time ratio.
Compile times are measured apart: every sampler / likelihood program is lowered ahead of time and
compiled in a background thread pool (concurrently, to save wall time; each program's
figure is its own compile time, with some contention), the pmapped training step compiles on its
first call (figure: first call minus a warm step) while they do; nothing is timed while compiling.
The network has random weights (speed only): the adaptive solvers' NFE belong to that untrained
field, not to a trained model's. A time budget (--budget seconds) skips the sections still to come once it is spent.
Writes benchmarks/out/gpu_check.md (gpu_check_smoke.md with --smoke).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import traceback

if __name__ == "__main__" and "--smoke" in sys.argv:
    # Before JAX starts its backend: the smoke run checks that everything runs, not how fast, and
    # LLVM's lowest optimisation level halves XLA:CPU compile times (which dominate it).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.integrate

from benchmarks import gpu_parts
from benchmarks.common import Programs, machine_description, run_timed, write_result
from configs import cifar10_vp
from score_sde import config_utils, models, solvers
from score_sde.drivers import train
from score_sde.likelihood import log_likelihood
from score_sde.sde import default_eps, probability_flow_drift


@dataclasses.dataclass(frozen=True)
class Size:
    """Everything --smoke shrinks."""

    batch: int
    image_size: int
    train_steps: int
    em_steps: int
    pc_steps: int
    dpm_nfe: int
    edm_steps: int
    budget_s: float


FULL = Size(batch=128, image_size=32, train_steps=20, em_steps=1000, pc_steps=1000, dpm_nfe=20, edm_steps=18,
            budget_s=270.0)
SMOKE = Size(batch=4, image_size=8, train_steps=3, em_steps=20, pc_steps=10, dpm_nfe=20, edm_steps=18,
             budget_s=600.0)

def make_config(smoke: bool):
    """configs/cifar10_vp.py (continuous DDPM++, VP SDE); --smoke: a tiny DDPM++ on 8x8 images."""
    config = cifar10_vp.get_config()
    if smoke:
        config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        config.data.image_size = 8
    return config


class Report:
    """Collects (section, figure, value) rows and runs sections so that one failure does not stop the rest."""

    def __init__(self, budget_s: float):
        """budget_s: seconds after which the sections still to come are skipped (reported as skipped)."""
        self.rows: list[tuple[str, str, str]] = []
        self.failed: list[str] = []
        self.start, self.budget_s = time.perf_counter(), budget_s

    def figure(self, section: str, name: str, value: str) -> None:
        self.rows.append((section, name, value))
        print(f"  {name}: {value}", flush=True)

    def section(self, name: str, fn, *args):
        elapsed = time.perf_counter() - self.start
        print(f"\n=== {name} === (t = {elapsed:.0f} s)", flush=True)
        if elapsed > self.budget_s:
            print(f"  SKIPPED: time budget of {self.budget_s:.0f} s spent", flush=True)
            self.rows.append((name, "skipped", f"time budget {self.budget_s:.0f} s spent"))
            self.failed.append(name)
            return None
        try:
            return fn(*args)
        except Exception as e:  # a broken section must not hide the others' figures
            traceback.print_exc()
            print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
            self.rows.append((name, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"))
            self.failed.append(name)
            return None

    def table(self) -> str:
        lines = ["| section | figure | value |", "|---|---|---|"]
        lines += [f"| {s} | {n} | {v.replace('|', '/')} |" for s, n, v in self.rows]
        return "\n".join(lines)


def devices(rep: Report) -> None:
    for d in jax.devices():
        print(f"  {d} ({d.device_kind})")
    rep.figure("devices", "devices", f"{jax.device_count()} x {jax.default_backend()} ({jax.devices()[0].device_kind})")


def train_throughput(rep: Report, progs: Programs, config, size: Size, shape, model, sde, params) -> None:
    """The pmapped step of score_sde.drivers.train on a resident synthetic batch; compile = first call - warm step.

    The step compiles while the sampler programs do; the steps are timed once every compile is done.
    """
    config.training.batch_size = size.batch
    per_dev = train.check_batch_config(config.training)
    opt, p_step = train.step_for_config(config, model, sde)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params),
                             ema_params=params, rng=jax.random.PRNGKey(0))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    pstate = train.replicate(state)
    xs = np.random.default_rng(0).uniform(-1, 1, (jax.local_device_count(), 1, per_dev, *shape)).astype(np.float32)
    xs = train.shard_to_devices(xs)
    t0 = time.perf_counter()
    pstate, m = p_step(pstate, xs)
    jax.block_until_ready((pstate, m))
    first = time.perf_counter() - t0
    progs.wait_all()  # no compilation (or GPU autotuning) running beside the timed steps
    pstate, m = p_step(pstate, xs)
    jax.block_until_ready((pstate, m))
    t0 = time.perf_counter()
    for _ in range(size.train_steps):
        pstate, m = p_step(pstate, xs)
    jax.block_until_ready((pstate, m))
    step = (time.perf_counter() - t0) / size.train_steps
    rep.figure("train", "parameters", f"{n_params / 1e6:.2f} M")
    rep.figure("train", "compile (s)", f"{max(first - step, 0.0):.1f}")
    rep.figure("train", "step time (ms)", f"{step * 1e3:.1f}")
    rep.figure("train", "steps/s", f"{1 / step:.2f}")
    rep.figure("train", "images/s", f"{size.batch / step:.1f}")
    rep.figure("train", "loss finite", str(bool(np.all(np.isfinite(np.asarray(m["loss"]))))))


def build(config, shape):
    """The DDPM++ network of `config`, its SDE and randomly initialised params (jitted: eager Flax init is slow)."""
    model, sde = config_utils.model_from_config(config.model), config_utils.sde_from_config(config.sde)
    x = jnp.zeros((1, *shape), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x, jnp.zeros((1,), jnp.float32))["params"]
    return model, sde, params


def score_eval(rep: Report, progs: Programs, score, x) -> float:
    """Seconds of one score evaluation of the batch (best of 5): the baseline of the sampler ratios."""
    compiled, c = progs.get("score_eval")
    t, _ = run_timed(compiled, score, x, repeats=5)
    rep.figure("score_eval", "compile (s)", f"{c:.1f}")
    rep.figure("score_eval", "one eval (ms)", f"{t * 1e3:.2f}")
    return t


def sampler_specs(size: Size) -> dict:
    return {
        "dpm_solver-20": solvers.get("dpm_solver", nfe=size.dpm_nfe),
        "edm_heun-18": solvers.get("edm_heun", n_steps=size.edm_steps),
        "ode dopri5": solvers.get("ode", solver="dopri5", rtol=1e-5, atol=1e-5),
        "euler_maruyama-1000": solvers.get("euler_maruyama", n_steps=size.em_steps),
        "pc-1000": solvers.get("pc", predictor="reverse_diffusion", corrector="langevin", n_steps=size.pc_steps),
    }


def submit_programs(progs: Programs, size: Size, sde, score, inputs: dict) -> None:
    """Lowers every timed program here, in order; they compile in the background meanwhile."""
    shape = inputs["x"].shape
    progs.submit("score_eval", eqx.filter_jit(lambda s, x: s(x, jnp.full((x.shape[0],), 0.5, x.dtype))),
                 score, inputs["x"])
    for label, sampler in sampler_specs(size).items():
        fn = eqx.filter_jit(lambda smp, key, s: smp(key, sde, s, shape))
        progs.submit(f"sample:{label}", fn, sampler, inputs["key"], score)
    fn = eqx.filter_jit(lambda key, s, x: log_likelihood(key, sde, s, x, divergence="hutchinson"))
    progs.submit("likelihood", fn, inputs["key"], score, inputs["x"])
    ode = solvers.get("ode", solver="dopri5", rtol=1e-5, atol=1e-5, denoise=False)
    eps = default_eps(sde)
    progs.submit("ode_device", eqx.filter_jit(lambda s, x: ode.solve(sde, s, x, eps)), score, inputs["x_T"])
    progs.submit("host_drift", eqx.filter_jit(lambda s, x, t: probability_flow_drift(sde, s, x, t)),
                 score, inputs["x_T"], jnp.float32(1.0))


def sample(rep: Report, progs: Programs, label: str, sampler, score, inputs: dict, t_eval: float | None) -> None:
    """samples/s of one sampler: one timed run of the compiled solve (a 1000-step solve is long enough)."""
    section = f"sample:{label}"
    compiled, c = progs.get(section)
    t, (x, info) = run_timed(compiled, sampler, inputs["key"], score)
    nfe = int(info.nfe)
    rep.figure(section, "compile (s)", f"{c:.1f}")
    rep.figure(section, "wall (s)", f"{t:.3f}")
    rep.figure(section, "NFE", str(nfe))
    rep.figure(section, "samples/s", f"{x.shape[0] / t:.2f}")
    if t_eval:
        rep.figure(section, "wall / (NFE x score eval)", f"{t / (nfe * t_eval):.2f}")
    rep.figure(section, "finite", str(bool(jnp.all(jnp.isfinite(x)))))


def likelihood(rep: Report, progs: Programs, score, inputs: dict) -> None:
    """Seconds per batch of the Hutchinson log-likelihood (tsit5, rtol = atol = 1e-5)."""
    compiled, c = progs.get("likelihood")
    t, res = run_timed(compiled, inputs["key"], score, inputs["x"])
    rep.figure("likelihood", "compile (s)", f"{c:.1f}")
    rep.figure("likelihood", "time / batch (s)", f"{t:.3f}")
    rep.figure("likelihood", "NFE", str(int(res.nfe)))
    rep.figure("likelihood", "images/s", f"{inputs['x'].shape[0] / t:.2f}")
    rep.figure("likelihood", "logp finite", str(bool(jnp.all(jnp.isfinite(res.logp)))))


def host_vs_device(rep: Report, progs: Programs, sde, score, inputs: dict) -> None:
    """The probability-flow ODE on device (diffrax dopri5) vs scipy RK45 with a device round trip per evaluation."""
    x_T = inputs["x_T"]
    shape, eps = x_T.shape, default_eps(sde)
    compiled, c_dev = progs.get("ode_device")
    t_dev, (x_dev, nfe_dev, _) = run_timed(compiled, score, x_T)
    drift, c_host = progs.get("host_drift")

    def f(t, y):  # host -> device -> host on every evaluation, as the 2021 code did
        return np.asarray(drift(score, jnp.asarray(y.reshape(shape), jnp.float32), jnp.float32(t)),
                          np.float64).ravel()

    t0 = time.perf_counter()
    sol = scipy.integrate.solve_ivp(f, (sde.T, eps), np.asarray(x_T, np.float64).ravel(), method="RK45",
                                    rtol=1e-5, atol=1e-5)
    t_host = time.perf_counter() - t0
    diff = float(np.max(np.abs(np.asarray(x_dev, np.float64).ravel() - sol.y[:, -1])))
    rep.figure("host_vs_device", "compile device solve / host drift (s)", f"{c_dev:.1f} / {c_host:.1f}")
    rep.figure("host_vs_device", "device dopri5 (s, NFE)", f"{t_dev:.3f} ({int(nfe_dev)})")
    rep.figure("host_vs_device", "host scipy RK45 (s, NFE)", f"{t_host:.3f} ({sol.nfev})")
    rep.figure("host_vs_device", "host / device time", f"{t_host / t_dev:.1f}x")
    rep.figure("host_vs_device", "max abs(x_device - x_host)", f"{diff:.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes that run on CPU in under a minute")
    ap.add_argument("--budget", type=float, default=None, help="seconds after which remaining sections are skipped")
    ap.add_argument("--out", default=None, help="folder for the Markdown results (default benchmarks/out)")
    ap.add_argument("--section", default=None, help=f"run one part: {' | '.join(gpu_parts.PARTS)}")
    ap.add_argument("--sections", default=None, help="run these parts in this order (comma-separated), each in a "
                    f"child process limited to min({gpu_parts.PART_LIMIT_S} s, budget left)")
    ap.add_argument("--budget-s", type=float, default=840.0, help="total seconds for --sections")
    args = ap.parse_args(argv)
    chosen = [args.section] if args.section else (args.sections.split(",") if args.sections else [])
    bad = [p for p in chosen if p not in gpu_parts.PARTS]
    if bad:
        ap.error(f"unknown part {bad[0]!r}; valid parts: {', '.join(gpu_parts.PARTS)}")
    if args.section:
        return gpu_parts.run_part(args.section, args.smoke, args.out)
    if args.sections:
        return gpu_parts.drive(chosen, args.budget_s, args.smoke, args.out)
    size = SMOKE if args.smoke else FULL
    rep = Report(args.budget if args.budget is not None else size.budget_s)
    config = make_config(args.smoke)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    batch_shape = (size.batch, *shape)
    print(f"gpu_check ({'smoke' if args.smoke else 'full'}): DDPM++ nf={config.model.nf} "
          f"ch_mult={tuple(config.model.ch_mult)} res_blocks={config.model.num_res_blocks}, "
          f"images {shape}, batch {size.batch}\n{machine_description()}", flush=True)

    rep.section("devices", devices, rep)
    built = rep.section("build", build, config, shape)
    if built is not None:
        model, sde, params = built
        score = models.score_fn(model, {"params": params}, sde)  # the network as score_fn(x, t)
        inputs = {"key": jax.random.PRNGKey(2),
                  "x": jax.random.uniform(jax.random.PRNGKey(3), batch_shape, minval=-1.0, maxval=1.0),
                  "x_T": sde.prior_sampling(jax.random.PRNGKey(5), batch_shape)}
        progs = Programs(workers=min(8, os.cpu_count() or 1))
        rep.section("lower (compiles continue in the background)", submit_programs, progs, size, sde, score, inputs)
        rep.section("train", train_throughput, rep, progs, config, size, shape, model, sde, params)
        t_eval = rep.section("score_eval", score_eval, rep, progs, score, inputs["x"])
        for label, sampler in sampler_specs(size).items():
            rep.section(f"sample:{label}", sample, rep, progs, label, sampler, score, inputs, t_eval)
        rep.section("likelihood", likelihood, rep, progs, score, inputs)
        rep.section("host_vs_device", host_vs_device, rep, progs, sde, score, inputs)
        progs.close()

    total = time.perf_counter() - rep.start
    print(f"\n=== summary === ({total:.0f} s in all)\n{rep.table()}", flush=True)
    mode = "smoke" if args.smoke else "full"
    body = (f"{mode} run, DDPM++ nf={config.model.nf} ch_mult={tuple(config.model.ch_mult)}, images {shape}, "
            f"batch {size.batch}, random init; {total:.0f} s in all. Sampler steps: EM {size.em_steps}, "
            f"PC {size.pc_steps}, DPM-Solver NFE {size.dpm_nfe}, EDM {size.edm_steps}.\n\n" + rep.table())
    name = "gpu_check_smoke" if args.smoke else "gpu_check"
    cmd = "python -m benchmarks.gpu_check" + (" --smoke" if args.smoke else "")
    print(f"wrote {write_result(name, body, cmd, title=f'GPU check ({mode})', directory=args.out)}")
    if rep.failed:
        print(f"sections failed or skipped: {', '.join(rep.failed)}")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
