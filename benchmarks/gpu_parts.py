"""The device check in parts: each part fits a few minutes of a lent accelerator and writes its own file.

    python -m benchmarks.gpu_check --section=train          # one part (train | sample | likelihood | memory)
    python -m benchmarks.gpu_check --sections=memory,train,sample,likelihood --budget-s=840
                                                           # the driver: parts in this order, each a child
                                                           # process with a limit of min(240 s, budget left)
    ... --smoke                                            # tiny sizes on CPU (a small MLP in place of DDPM++):
                                                           # proves each part starts and writes its file

Parts (DDPM++ of configs/cifar10_vp.py, CIFAR-10 shape 32x32x3, random weights: speed only):
  train       steps/s at batch 128 for float32, bf16 (training.precision) and remat (model.remat), one device,
              the `make_train_step` of the training driver; MFU = XLA cost-analysis FLOPs of the compiled step /
              step time / the device's peak (PEAK_TFLOPS; fp32 runs against the TF32 peak: XLA's default
              precision on Ampere and later); peak device memory (`memory_stats`).
  sample      images/s of the fast samplers (DPM-Solver-20, UniPC-10, iPNDM-10, EDM Heun-18) at batch 256 and 1024.
  likelihood  ODE log-likelihood images/s (Hutchinson, tsit5, rtol = atol = 1e-5) at batch 128.
  memory      compiled memory analysis (argument / output / temp bytes) of the train step at batch 64 and 128,
              plain and remat, on this device, and the largest batch for its memory (benchmarks.memory's fit).
Programs of a part compile concurrently (`benchmarks.common.Programs`); every figure is written to
benchmarks/out/gpu_check_<part>.md and .json (--out: another folder) as soon as its variant finishes (a part cut short by the
driver keeps what it wrote).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import memory
from benchmarks.common import RESULTS, Programs, machine_description, run_timed, write_result
from configs import cifar10_vp
from score_sde import config_utils, models, solvers
from score_sde.drivers import train
from score_sde.likelihood import log_likelihood

PARTS = ("train", "sample", "likelihood", "memory")
PART_LIMIT_S = 240
# dense peak TFLOP/s (vendor data sheets, SXM parts): (tf32, bf16); fp32 runs are set against tf32
PEAK_TFLOPS = {"H100": (494.7, 989.4), "H200": (494.7, 989.4), "A100": (156.0, 312.0)}


@dataclasses.dataclass(frozen=True)
class Size:
    train_batch: int
    train_steps: int
    sample_batches: tuple
    likelihood_batch: int
    memory_batches: tuple
    smoke: bool
    variants: tuple = ("fp32", "bf16", "remat")  # train part
    n_samplers: int = 4  # sample part: the first n of fast_samplers()
    remats: tuple = (False, True)  # memory part


FULL = Size(128, 20, (256, 1024), 128, (64, 128), False)
# every part starts, compiles its programs for a small MLP (not DDPM++: its XLA:CPU compiles take minutes
# on a shared 2-core machine; the networks have their own tests) and writes its file
SMOKE = Size(4, 2, (4,), 4, (1, 2), True, variants=("fp32",), n_samplers=1, remats=(False,))


def make_config(size: Size, precision: str = "fp32", remat: bool = False):
    config = cifar10_vp.get_config()
    if size.smoke:  # a small MLP on 4x4x3: the part's plumbing, in seconds of XLA:CPU compiling
        config.model.update(name="mlp", hidden=(16,))
        config.data.image_size = 4
    config.training.precision, config.model.remat = precision, remat
    config.training.batch_size = size.train_batch
    return config


def _shape(config):
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


class Writer:
    """Collects one part's figures; writes gpu_check_<part>.md / .json after every `add`."""

    def __init__(self, part: str, out: pathlib.Path, smoke: bool):
        self.part, self.out, self.smoke, self.rows = part, out, smoke, []
        self.name = f"gpu_check_{part}" + ("_smoke" if smoke else "")

    def add(self, variant: str, figures: dict) -> None:
        self.rows.append({"variant": variant, **figures})
        print(f"  {variant}: {figures}", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        device = f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
        (self.out / f"{self.name}.json").write_text(json.dumps({"device": device, "rows": self.rows}, indent=1))
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in self.rows]
        cmd = f"python -m benchmarks.gpu_check --section={self.part}" + (" --smoke" if self.smoke else "")
        write_result(self.name, f"Device: {device}.\n\n" + "\n".join(lines), cmd,
                     title=f"GPU check: {self.part}", directory=self.out)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def peak_tflops(kind: str, precision: str) -> float | None:
    for name, (tf32, bf16) in PEAK_TFLOPS.items():
        if name in kind:
            return bf16 if precision == "bf16" else tf32
    return None


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _train_program(config):
    net, sde = config_utils.objects(config).net, config_utils.objects(config).sde
    opt = train.make_optimizer(config.optim)
    state = jax.jit(lambda k: train.create_train_state(k, net, opt, _shape(config)))(jax.random.PRNGKey(0))
    loss = train.loss_fn_from_config(config, models.with_precision(net, config.training.precision), sde)
    x = jax.random.uniform(jax.random.PRNGKey(1), (config.training.batch_size, *_shape(config)), minval=-1.0)
    return jax.jit(train.make_train_step(loss, opt, config.model.ema_rate), donate_argnums=0), state, x


def part_train(size: Size, out: pathlib.Path) -> None:
    w, progs, inputs = Writer("train", out, size.smoke), Programs(workers=3), {}
    variants = {k: v for k, v in {"fp32": ("fp32", False), "bf16": ("bf16", False), "remat": ("fp32", True)}.items()
                if k in size.variants}
    for name, (precision, remat) in variants.items():
        fn, state, x = _train_program(make_config(size, precision, remat))
        inputs[name] = (state, x)
        progs.submit(name, fn, state, x)
    kind = jax.devices()[0].device_kind
    for name, (precision, _) in variants.items():
        compiled, compile_s = progs.get(name)
        state, x = inputs[name]
        state, m = compiled(state, x)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        for _ in range(size.train_steps):
            state, m = compiled(state, x)
        jax.block_until_ready((state, m))
        step = (time.perf_counter() - t0) / size.train_steps
        flops, peak = _flops(compiled), peak_tflops(kind, precision)
        w.add(name, {"batch": size.train_batch, "compile_s": compile_s, "step_ms": step * 1e3, "steps_per_s": 1 / step,
                     "images_per_s": size.train_batch / step, "tflops_per_step": (flops or 0) / 1e12,
                     "mfu": (flops / step / (peak * 1e12)) if flops and peak else "n/a (no peak for this device)",
                     "peak_memory_gb": (_peak_memory() or 0) / 1e9 or "n/a (backend has no memory_stats)",
                     "loss_finite": bool(np.isfinite(float(m["loss"])))})
        del state, compiled
    progs.close()


def _score(size: Size):
    config = make_config(size)
    net, sde = config_utils.objects(config).net, config_utils.objects(config).sde
    params = jax.jit(net.init)(jax.random.PRNGKey(1), jnp.zeros((1, *_shape(config))), jnp.zeros((1,)))["params"]
    return config, sde, models.score_fn(net, {"params": params}, sde)


def fast_samplers(n: int = 4) -> dict:
    """The first n of DPM-Solver-20, UniPC-10, iPNDM-10, EDM Heun-18 (all are built, to check their options)."""
    every = {"dpm_solver-20": solvers.get("dpm_solver", nfe=20), "unipc-10": solvers.get("unipc", nfe=10),
             "ipndm-10": solvers.get("ipndm", n_steps=10), "edm_heun-18": solvers.get("edm_heun", n_steps=18)}
    return dict(list(every.items())[:n])


def part_sample(size: Size, out: pathlib.Path) -> None:
    w, progs = Writer("sample", out, size.smoke), Programs(workers=8)
    config, sde, score = _score(size)
    key = jax.random.PRNGKey(2)
    for batch in size.sample_batches:
        for label, sampler in fast_samplers(size.n_samplers).items():
            shape = (batch, *_shape(config))
            progs.submit(f"{label}@{batch}", eqx.filter_jit(lambda smp, k, s, shape=shape: smp(k, sde, s, shape)),
                         sampler, key, score)
    for batch in size.sample_batches:
        for label, sampler in fast_samplers(size.n_samplers).items():
            compiled, compile_s = progs.get(f"{label}@{batch}")
            run_timed(compiled, sampler, key, score)  # warm
            t, (x, info) = run_timed(compiled, sampler, key, score)
            w.add(f"{label} batch {batch}", {"compile_s": compile_s, "wall_s": t, "nfe": int(info.nfe),
                                              "images_per_s": batch / t,
                                              "finite": bool(jnp.all(jnp.isfinite(x)))})
    progs.close()


def part_likelihood(size: Size, out: pathlib.Path) -> None:
    w = Writer("likelihood", out, size.smoke)
    config, sde, score = _score(size)
    x = jax.random.uniform(jax.random.PRNGKey(3), (size.likelihood_batch, *_shape(config)), minval=-1.0)
    fn = eqx.filter_jit(lambda k, s, y: log_likelihood(k, sde, s, y, divergence="hutchinson", solver="tsit5",
                                                         rtol=1e-5, atol=1e-5))
    t0 = time.perf_counter()
    compiled = fn.lower(jax.random.PRNGKey(4), score, x).compile()
    compile_s = time.perf_counter() - t0
    t, res = run_timed(compiled, jax.random.PRNGKey(4), score, x)
    w.add(f"hutchinson tsit5 batch {size.likelihood_batch}",
          {"compile_s": compile_s, "wall_s": t, "nfe": int(res.nfe), "images_per_s": size.likelihood_batch / t,
           "finite": bool(jnp.all(jnp.isfinite(res.logp)))})


def part_memory(size: Size, out: pathlib.Path) -> None:
    w = Writer("memory", out, size.smoke)
    capacity = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    for remat in size.remats:
        config = make_config(size, remat=remat)
        by_batch = memory.measure(config, size.memory_batches, ("train",))["train"]
        for batch, m in by_batch.items():
            w.add(f"train remat={remat} batch {batch}", {k: m[k] / 1e9 for k in ("argument", "output", "temp", "alias")})
        if capacity:
            b_max, fit = memory.largest_batch(by_batch, capacity)
            w.add(f"train remat={remat} largest batch", {"device_bytes_limit_gb": capacity / 1e9, "max_batch": b_max,
                                                         "gb_per_example": fit["per_example"] / 1e9})


RUNNERS = {"train": part_train, "sample": part_sample, "likelihood": part_likelihood, "memory": part_memory}


def run_part(part: str, smoke: bool, out: str | None) -> int:
    size = SMOKE if smoke else FULL
    t0 = time.perf_counter()
    print(f"=== part {part} ({'smoke' if smoke else 'full'}) ===\n{machine_description()}", flush=True)
    RUNNERS[part](size, pathlib.Path(out) if out else RESULTS)
    print(f"=== part {part} done in {time.perf_counter() - t0:.0f} s ===", flush=True)
    return 0


def drive(parts: list[str], budget_s: float, smoke: bool, out: str | None) -> int:
    """Runs each part in a child process, in order, with a limit of min(PART_LIMIT_S, budget left);
    a part that would start with under 30 s left is skipped. Returns 1 if any part failed or was cut."""
    start, failed = time.perf_counter(), []
    for part in parts:
        left = budget_s - (time.perf_counter() - start)
        if left < 30:
            print(f"=== part {part}: SKIPPED ({left:.0f} s of the budget left) ===", flush=True)
            failed.append(part)
            continue
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", f"--section={part}"] + (["--smoke"] if smoke else [])
        cmd += ["--out", out] if out else []
        try:
            rc = subprocess.run(cmd, timeout=min(PART_LIMIT_S, left), env=dict(os.environ)).returncode
        except subprocess.TimeoutExpired:
            print(f"=== part {part}: CUT at {min(PART_LIMIT_S, left):.0f} s (its file holds what finished) ===")
            rc = 124
        if rc:
            failed.append(part)
    print(f"=== parts done in {time.perf_counter() - start:.0f} s; failed or cut: {failed or 'none'} ===", flush=True)
    return 1 if failed else 0


__all__ = ["PARTS", "PART_LIMIT_S", "PEAK_TFLOPS", "run_part", "drive", "peak_tflops"]
