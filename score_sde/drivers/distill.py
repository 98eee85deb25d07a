"""--mode=distill: train few-step students of a teacher with the training loop of `train.py`.

    python main.py --config=configs/toy_distill.py --workdir=runs/toy_distill --mode=distill
    python main.py --config=configs/toy_distill.py --workdir=runs/toy_distill --mode=sample \
      --config.sampling.method=student --config.sampling.student.n_steps=2

The teacher is a trained run (`distill.teacher=workdir`, `distill.teacher_workdir`: its EMA params,
same config) or, for the toy mixture, its exact score (`distill.teacher=analytic`). Its arrays are
the pmapped step's `frozen` argument.

- progressive: rounds N = teacher_steps / 2, / 4, ..., 1, each `training.n_iters` steps in
  `<workdir>/progressive/<N>/` (checkpoints, metrics.jsonl, tensorboard, resume, signals: `train.run_loop`);
  round 1 starts from the teacher's weights (a trained teacher of the same network) and each later
  round from the previous student, which is then its teacher.
- consistency: one run in `<workdir>/consistency/`; the EMA of the params (`model.ema_rate`) is the
  target network theta- and the sampled model.
"""

from __future__ import annotations

import copy
import functools
import json
import os

import jax
import ml_collections

from score_sde import config_utils, data
from score_sde.distill import (DISTANCES, WEIGHTINGS, Student, consistency_loss_fn, progressive_loss_fn,
                               teacher_step)
from score_sde.drivers import train
from score_sde.lookup import check_choice
from score_sde.plumbing import restore

METHODS = ("progressive", "consistency")
TEACHERS = ("analytic", "workdir")
TEACHER_SAMPLERS = ("ddim", "edm_heun")  # consistency distillation's one ODE step


def check_distill_config(config) -> None:
    """Raises ValueError naming a bad `config.distill` key and what is valid (nothing is written)."""
    dc = config.distill
    check_choice(dc.method, METHODS, "distill.method", "methods")
    check_choice(dc.teacher, TEACHERS, "distill.teacher", "teachers")
    if dc.teacher == "analytic" and config.data.dataset != "toy_gmm":
        raise ValueError(f"distill.teacher=analytic is the exact score of the toy_gmm mixture; data.dataset is "
                         f"{config.data.dataset!r}: use distill.teacher=workdir with distill.teacher_workdir")
    if dc.teacher == "workdir" and not dc.teacher_workdir:
        raise ValueError("distill.teacher=workdir needs distill.teacher_workdir, the workdir of a trained run of this "
                         "config (or distill.teacher=analytic for the toy_gmm mixture)")
    n = int(dc.teacher_steps)
    if dc.method == "progressive" and (n < 2 or n & (n - 1)):
        raise ValueError(f"distill.teacher_steps must be a power of 2 >= 2 (rounds halve it down to 1), got {n}")
    check_choice(dc.weighting, WEIGHTINGS, "distill.weighting", "weightings")
    check_choice(dc.distance, DISTANCES, "distill.distance", "distances")
    check_choice(dc.teacher_sampler, TEACHER_SAMPLERS, "distill.teacher_sampler", "teacher samplers")
    if dc.n_points < 2:
        raise ValueError(f"distill.n_points must be >= 2 (consistency discretisation times), got {dc.n_points}")
    objects = config_utils.objects(config)
    if objects.cond_spec:
        raise ValueError("distilling a conditional model (labels, classifier-free guidance) is not built yet; "
                         "use an unconditional config (data.num_classes=0, no data.cond)")
    if "scalar_kernel" not in objects.sde.capabilities:
        raise ValueError(f"distillation needs an SDE with a scalar Gaussian kernel (vpsde, subvpsde, vesde), "
                         f"got sde.name={config.sde.name!r}")


def rounds(teacher_steps: int) -> list[int]:
    """The progressive students' step counts: teacher_steps / 2, / 4, ..., 1."""
    out, n = [], int(teacher_steps)
    while n > 1:
        n //= 2
        out.append(n)
    return out


def student_dir(workdir: str, method: str, n_steps: int | None = None) -> str:
    """Where a student's run lives: <workdir>/progressive/<N> or <workdir>/consistency."""
    return os.path.join(workdir, "progressive", str(n_steps)) if method == "progressive" else \
        os.path.join(workdir, "consistency")


def run_dirs(config, workdir: str) -> list[str]:
    """The student runs `--mode=distill` writes: one per progressive round, or the consistency run."""
    if config.distill.method == "progressive":
        return [student_dir(workdir, "progressive", n) for n in rounds(config.distill.teacher_steps)]
    return [student_dir(workdir, "consistency")]


def make_student(config, params=None) -> Student:
    """The `Student` of `config` (network `config.model`, parameterisation from distill.method)."""
    sde, net = config_utils.sde_from_config(config.sde), config_utils.net_from_config(config)
    kind = "v" if config.distill.method == "progressive" else "consistency"
    eps = config.distill.eps if config.distill.eps is not None else sde.sampling_eps
    return Student(net, {"params": params}, sde, kind, float(eps), float(config.distill.sigma_data))


def load_teacher(config, data_shape: tuple[int, ...]):
    """(the teacher's frozen arrays, its network params or None): the trained run's EMA variables, or
    the toy mixture's (weights, means, stds) for the exact score (`_teacher_builder` rebuilds it)."""
    if config.distill.teacher == "analytic":
        gmm = data.sources.toy_gmm_mixture()
        return (gmm.weights, gmm.means, gmm.stds), None
    loaded = restore.load_score_fn(config, config.distill.teacher_workdir, data_shape)
    return loaded.score_fn.variables, loaded.score_fn.variables["params"]


@functools.lru_cache(maxsize=8)
def _pmapped_step(config_json: str, n_steps: int):
    """(optimizer, pmapped step) of a student run, cached on what defines the step (the config without its
    loop settings, the round), so that a resumed run in the same process does not recompile. The
    teacher's arrays are the step's `frozen` argument, so they are not part of the key."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    dc, sde = config.distill, config_utils.sde_from_config(config.sde)
    student = make_student(config)
    denoise = lambda params, x, t: student.with_variables({"params": params}).denoise(x, t)  # noqa: E731
    build = _teacher_builder(config, n_steps, student)
    optimizer = train.make_optimizer(config.optim)
    warmup = bool(config.model.get("ema_warmup", True))
    if dc.method == "consistency":
        from score_sde import solvers

        step = teacher_step(sde, build, solvers.get(dc.teacher_sampler))
        loss = consistency_loss_fn(denoise, step, sde, dc.n_points, student.eps, dc.distance, dc.huber_c)
        return optimizer, train.make_pmapped_step(loss, optimizer, config.model.ema_rate, warmup,
                                                  lambda state, f: {"teacher": f, "target": state.ema_params})
    from score_sde.solvers.ddim import DDIMSampler

    loss = progressive_loss_fn(denoise, teacher_step(sde, build, DDIMSampler()), sde, n_steps, dc.weighting)
    return optimizer, train.make_pmapped_step(loss, optimizer, config.model.ema_rate, warmup)


def _teacher_builder(config, n_steps: int, student: Student):
    """build(frozen) -> this round's teacher: the toy mixture's exact score from (weights, means, stds), a
    trained run's ScoreModel or (later progressive rounds) the previous student from {"params": ...}."""
    sde = config_utils.sde_from_config(config.sde)
    if config.distill.method == "progressive" and n_steps < config.distill.teacher_steps // 2:
        return student.with_variables
    if config.distill.teacher == "analytic":
        from score_sde.analytic import GaussianMixture

        return lambda f: GaussianMixture(*f).score_fn(sde)
    return lambda variables: config_utils.score_model_from_config(config, variables)


def _step_key(config) -> str:
    """The config as JSON without the keys that do not change the compiled step (loop settings, sampling)."""
    keep = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k]
            for k in ("model", "sde", "optim", "distill", "data", "seed")}
    return json.dumps(keep, sort_keys=True, default=str)


def _run(config, run_dir: str, n_steps: int, frozen, init_params, train_iter) -> train.TrainState:
    """One student run through `train.run_loop` (checkpoints, resume, signals, metrics)."""
    tc = config.training
    per_device = train.check_batch_config(tc)
    objects = config_utils.objects(config)
    optimizer, p = _pmapped_step(_step_key(config), n_steps)
    state = train.create_train_state(jax.random.PRNGKey(config.seed), objects.net, optimizer,
                                     tuple(train_iter.data_shape))
    if init_params is not None:  # a student starts from its teacher's weights
        state = state.replace(params=init_params, ema_params=init_params, opt_state=optimizer.init(init_params))
    return train.run_loop(run_dir, lambda s, b: p(s, b, frozen), state, train_iter, tc, per_device)


def distill(config, workdir: str, train_iter) -> dict[str, train.TrainState]:
    """Runs distill.method; returns {student dir: final state}. Resumes every unfinished run."""
    check_distill_config(config)
    frozen, params = load_teacher(config, tuple(train_iter.data_shape))
    if config.distill.method == "consistency":
        run_dir = student_dir(workdir, "consistency")
        return {run_dir: _run(config, run_dir, 0, frozen, params, train_iter)}
    out = {}
    for n in rounds(config.distill.teacher_steps):
        run_dir = student_dir(workdir, "progressive", n)
        print(f"progressive distillation: {2 * n} teacher steps -> {n} student steps in {run_dir}")
        state = _run(config, run_dir, n, frozen, params, train_iter)
        out[run_dir] = state
        params = state.ema_params
        frozen = {"params": params}  # the next round's teacher: this student
    return out


def load_student(config, workdir: str, data_shape: tuple[int, ...], step: int | None = None) -> restore.Loaded:
    """The student for `sampling.student.n_steps` steps (progressive) or any steps (consistency) of the
    distill run in `workdir`, as a `Loaded` whose score_fn is the `Student`."""
    method, k = config.distill.method, int(config.sampling.student.n_steps)
    check_choice(method, METHODS, "distill.method", "methods")
    run_dir = student_dir(workdir, method, k)
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        there = os.path.join(workdir, "progressive")
        have = sorted(int(d) for d in os.listdir(there) if d.isdigit()) if os.path.isdir(there) else []
        what = f"progressive students for {have} steps" if have else "no progressive students"
        raise restore.CheckpointNotFoundError(
            f"no {method} student for {k} steps in {run_dir}; {workdir} has {what}"
            f"{' and a consistency student' if os.path.isdir(student_dir(workdir, 'consistency')) else ''}; "
            "distil first with --mode=distill (or set distill.method / sampling.student.n_steps)")
    loaded = restore.load_score_fn(config, run_dir, data_shape, step)
    student = make_student(config, loaded.score_fn.variables["params"])
    return restore.Loaded(student, loaded.sde, loaded.data_shape, loaded.step)


def sampling_config(config):
    """`config` with sampling.student.kind matching distill.method (ddim steps for a progressive
    student, multistep consistency sampling for a consistency one)."""
    out = copy.deepcopy(config)
    out.sampling.student.kind = "ddim" if config.distill.method == "progressive" else "consistency"
    return out


__all__ = ["METHODS", "TEACHERS", "TEACHER_SAMPLERS", "check_distill_config", "rounds", "student_dir", "run_dirs",
           "make_student", "load_teacher", "distill", "load_student", "sampling_config"]
