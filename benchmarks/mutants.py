"""Mutation check: plant one small deliberate bug at a time and see whether the test that claims to
cover it fails (issue 30).

    python -m benchmarks.mutants [--list] [--only SUBSTR ...] [--skip SUBSTR ...] [--timeout S] [--keep]

Each entry of `MUTANTS` is (name, file, old text, new text, test node id). For each mutant the
repository is copied once to a temporary folder (never the working tree: `git ls-files` plus
untracked files that git does not ignore), `old` is replaced by `new` in that copy (it must occur
exactly once, else the entry is "stale" and reported as such), the one test is run there with
PYTHONPATH pointing at the copy, and the file is restored byte for byte. "caught" = the test
failed; "missed" = it passed; "error" = it timed out or pytest could not run. A summary tally ends
the report. Not part of CI (slow: one test run per mutant); run it before resolving an issue that
touches tested numerics, and add a mutant for every new numerical routine.

Last runs (2 shared CPU cores): issue 30's entries caught 19 of 19 (about 20 minutes; the same
entries against the tests before issue 30: caught 1 of the 15 whose test existed then); the metrics
entries (issue 25) caught 14 of 14. Equivalent mutants are left out: clipping the TF-2015 input to
[-1, 0.9921875] and clamping TF1's source coordinate at the last pixel change nothing for uint8
images, so no correct test can catch them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One planted bug: replace `old` (occurring exactly once in `file`) by `new`, then run `test`."""

    name: str
    file: str
    old: str
    new: str
    test: str


class StaleMutant(ValueError):
    """`old` does not occur exactly once in the file: the code moved on; update the entry."""


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # --- the table of issue 30 ---------------------------------------------------------------------------
    M("linear: the score ignored", "score_sde/inverse.py",
      "return self.score_fn(x, t).reshape(xp.shape[0], -1) @ self.v",
      "return jnp.zeros_like(xp)",
      "tests/test_inverse.py::test_noisy_mask_and_general_linear_observations"),
    # --- cascade (issue 26) ------------------------------------------------------------------------------
    M("cascade: SR input without the augmentation noise", "score_sde/image_to_image.py",
      'return {"low_res": augment(keys, jnp.asarray(low_res), levels), "aug_level": levels}',
      'return {"low_res": jnp.asarray(low_res), "aug_level": levels}',
      "tests/test_cascade.py::test_cascade_chain_and_its_outputs"),
    M("cascade: SR stage given the clean base samples", "score_sde/drivers/cascade.py",
      "high, sr_nfe = draw(sr_config, sr_loaded, num, sr_config.seed + 1, conds=conds)",
      'high, sr_nfe = draw(sr_config, sr_loaded, num, sr_config.seed + 1, conds={**conds, "low_res": low})',
      "tests/test_cascade.py::test_cascade_chain_and_its_outputs"),
    M("data.downsample: subsampling instead of block means", "score_sde/data/transforms.py",
      "return x if self.downsample == 1 else area_downsample(x, self.downsample)",
      "return x if self.downsample == 1 else x[:, ::self.downsample, ::self.downsample]",
      "tests/test_cascade.py::test_data_downsample_is_the_area_downsample_of_the_images"),
    # --- distillation (issue 27) --------------------------------------------------------------------------
    M("distill: progressive target = the two-step point", "score_sde/distill/progressive.py",
      "return (x_next - expand_to(ratio, x_t) * x_t) / expand_to(a_n - ratio * a, x_t)",
      "return x_next",
      "tests/test_distill.py::test_progressive_student_step_equals_two_teacher_steps"),
    M("distill: student DDIM move drops the noise direction", "score_sde/solvers/student.py",
      "return expand_to(a_n, x) * x0 + expand_to(s_n / s, x) * (x - expand_to(a, x) * x0)",
      "return expand_to(a_n, x) * x0",
      "tests/test_distill.py::test_progressive_student_step_equals_two_teacher_steps"),
    M("distill: teacher step to t = 0 not the data prediction", "score_sde/distill/teacher.py",
      "jnp.where(expand_to(to_clean, x), clean, moved)",
      "jnp.where(expand_to(to_clean, x), moved, moved)",
      "tests/test_distill.py::test_progressive_student_step_equals_two_teacher_steps"),
    M("distill: consistency target at t_hi", "score_sde/distill/consistency.py",
      "denoise(frozen[\"target\"], x_lo, t_lo)",
      "denoise(frozen[\"target\"], x_lo, t_hi)",
      "tests/test_distill.py::test_consistency_loss_is_zero_at_the_optimum"),
    M("distill: c_skip misses its boundary value", "score_sde/distill/student.py",
      "c_skip = sd**2 / ((sigma - sigma_min) ** 2 + sd**2)",
      "c_skip = sd**2 / (sigma**2 + sd**2)",
      "tests/test_distill.py::test_consistency_boundary_condition_is_exact"),
    # --- metrics (issue 25 / 30): the Flax Inception against its golden file and the torch reference ---
    M('metrics: pool padding counted', 'score_sde/metrics/inception.py',
      'padding=((1, 1), (1, 1)), count_include_pad=False)',
      'padding=((1, 1), (1, 1)), count_include_pad=True)',
      'tests/test_metrics.py::test_flax_inception_matches_pytorch_fid_golden'),
    M('metrics: avg pool in Mixed 7c', 'score_sde/metrics/inception.py',
      'InceptionE(max_pool=True, name="Mixed_7c")',
      'InceptionE(name="Mixed_7c")',
      'tests/test_metrics.py::test_flax_inception_matches_pytorch_fid_golden'),
    M('metrics: no 2x minus 1', 'score_sde/metrics/inception.py',
      'return 2.0 * x01 - 1.0',
      'return x01',
      'tests/test_metrics.py::test_flax_inception_matches_pytorch_fid_golden'),
    M('metrics: eps 1e-5', 'score_sde/metrics/inception.py',
      'BN_EPS = 1e-3',
      'BN_EPS = 1e-5',
      'tests/test_metrics.py::test_flax_inception_matches_pytorch_fid_golden'),
    M('metrics: fid reference vs itself', 'score_sde/metrics/evaluation.py',
      '"fid": F.fid(stats, ref_stats)',
      '"fid": F.fid(ref_stats, ref_stats)',
      'tests/test_metrics.py::test_eval_reports_fid_kid_is'),
    M('metrics: kid samples vs themselves', 'score_sde/metrics/evaluation.py',
      'F.kid(feats, ref_kid)',
      'F.kid(feats, feats)',
      'tests/test_metrics.py::test_eval_reports_fid_kid_is'),
    M('metrics: precision recall swapped', 'score_sde/metrics/evaluation.py',
      'F.precision_recall(ref_kid, feats, k=PR_K)',
      'F.precision_recall(feats, ref_kid, k=PR_K)',
      'tests/test_metrics.py::test_eval_reports_fid_kid_is'),
    M('metrics: reference of other weights used', 'score_sde/metrics/evaluation.py',
      'if sha1 is not None and net.sha1 and sha1 != net.sha1:',
      'if False:',
      'tests/test_metrics.py::test_eval_reports_fid_kid_is'),
    M('metrics: tf2015 scaling 2x minus 1', 'score_sde/metrics/inception.py',
      'x01 * (255.0 / 128.0) - 1.0',
      'x01 * 2.0 - 1.0',
      'tests/test_metrics.py::test_tf2015_matches_the_torchscript_module_and_its_pipeline'),
    M('metrics: tf2015 half pixel resize', 'score_sde/metrics/inception.py',
      'half_pixel=self.variant == "pytorch_fid"',
      'half_pixel=True',
      'tests/test_metrics.py::test_tf2015_matches_the_torchscript_module_and_its_pipeline'),
    M('metrics: tf2015 bn gamma not one', 'score_sde/metrics/torchscript.py',
      'flat[("params", *mods, "bn", "scale")] = np.ones(',
      'flat[("params", *mods, "bn", "scale")] = 1.01 * np.ones(',
      'tests/test_metrics.py::test_tf2015_matches_the_torchscript_module_and_its_pipeline'),
    M('metrics: knn k off by one', 'score_sde/metrics/scores.py',
      'np.partition(d, k - 1, axis=1)[:, k - 1]',
      'np.partition(d, k, axis=1)[:, k]',
      'tests/test_metrics.py::test_precision_recall_is_the_knn_manifold_rule'),
    M('metrics: knn self as neighbour', 'score_sde/metrics/scores.py',
      'd[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf',
      'pass',
      'tests/test_metrics.py::test_precision_recall_is_the_knn_manifold_rule'),
    M('metrics: resize tf half pixel source', 'score_sde/metrics/inception.py',
      'np.minimum(np.arange(n_out) * (n_in / n_out), n_in - 1.0)',
      'np.minimum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, n_in - 1.0)',
      'tests/test_metrics.py::test_resize_matches_torch_bilinear'),
    # --- MNIST (issue 24) ---------------------------------------------------------------------------------
    M("mnist: pixels read back as k/255", "score_sde/mnist.py",
      "levels = images * 256.0", "levels = images * 255.0",
      "tests/test_mnist.py"),
    M("mnist: train split without the pickle's valid part", "score_sde/mnist.py",
      'parts[:2] if split == "train"', 'parts[:1] if split == "train"',
      "tests/test_mnist.py::test_wheel_gives_train_plus_valid_and_exact_levels"),
    M("mnist: labels left out of the SHA-256", "score_sde/mnist.py",
      "h.update(np.ascontiguousarray(labels, np.uint8).tobytes())", "pass",
      "tests/test_mnist.py::test_idx_and_wheel_agree_and_sha256_is_checked"),
    M("mnist quality: label agreement by the least likely class", "score_sde/mnist_quality.py",
      "np.mean(p.argmax(axis=1) == np.asarray(sample_labels))", "np.mean(p.argmin(axis=1) == np.asarray(sample_labels))",
      "tests/test_mnist_quality.py"),
    M("guided sampling ignores the labels", "score_sde/drivers/evaluate.py",
      "guided_score(config, sf, y, lp)", "guided_score(config, sf, jnp.zeros_like(y), lp)",
      "tests/test_conditional.py::test_guided_sampling_follows_the_label_and_the_scale"),
    M("guided sampling ignores the scale", "score_sde/drivers/evaluate.py",
      'scale = float(sc.get("guidance_scale", 0.0))', "scale = 0.0",
      "tests/test_conditional.py::test_guided_sampling_follows_the_label_and_the_scale"),
    M("custom_grid dropped (unipc, ipndm)", "score_sde/solvers/timesteps.py",
      "    if custom_grid is not None:\n        return fraction_steps(", "    if False:\n        return fraction_steps(",
      "tests/test_ipndm_grids.py::test_custom_grid_reproduces_a_spacing_and_reads_files"),
    M("custom_grid dropped (dpm_solver)", "score_sde/solvers/dpm_solver.py",
      "        if self.custom_grid is not None:\n            ts = fraction_steps(",
      "        if False:\n            ts = fraction_steps(",
      "tests/test_ipndm_grids.py::test_custom_grid_reproduces_a_spacing_and_reads_files"),
    M("pmap step: psum instead of pmean of the gradients (train)", "score_sde/drivers/train.py",
      "loss, grads = lax.pmean((loss, grads), axis_name)",
      "loss, grads = lax.pmean(loss, axis_name), lax.psum(grads, axis_name)",
      "tests/test_train.py::test_pmapped_step_matches_single_device_step"),
    M("pmap step: psum instead of pmean of the gradients (conditional)", "score_sde/drivers/train.py",
      "loss, grads = lax.pmean((loss, grads), axis_name)",
      "loss, grads = lax.pmean(loss, axis_name), lax.psum(grads, axis_name)",
      "tests/test_conditional.py::test_conditional_train_step_under_pmap"),
    M("smc: the -log g_t term dropped (two-mode test)", "score_sde/inverse.py",
      "log_w = mask * (_log_normal(a_s * y, mu, tau2 + v_s) - _log_normal(x, a_t * y, v_t))",
      "log_w = mask * _log_normal(a_s * y, mu, tau2 + v_s)",
      "tests/test_inverse.py::test_smc_exact_and_replacement_biased_between_two_modes"),
    M("smc: the -log g_t term dropped (noisy test)", "score_sde/inverse.py",
      "log_w = mask * (_log_normal(a_s * y, mu, tau2 + v_s) - _log_normal(x, a_t * y, v_t))",
      "log_w = mask * _log_normal(a_s * y, mu, tau2 + v_s)",
      "tests/test_inverse.py::test_noisy_mask_and_general_linear_observations"),
    M("RePaint: no re-noising between resampling rounds", "score_sde/inverse.py",
      "return (r * x_next + jnp.sqrt(v) * z).astype(x.dtype)",
      "return x_next.astype(x.dtype)",
      "tests/test_inverse.py::test_repaint_resampling_samples_the_conditional"),
    M("edit: linear instead of spherical interpolation", "score_sde/edit.py",
      "zs = slerp(z[:b], z[b:], jnp.linspace(0.0, 1.0, n))",
      "zs = (lambda lam: (1 - lam) * z[:b][:, None] + lam * z[b:][:, None])("
      "jnp.linspace(0.0, 1.0, n).reshape((1, n) + (1,) * (z.ndim - 1)))",
      "tests/test_edit.py::test_interpolation_endpoints_and_slerp"),
    M("timer: compile intervals summed instead of merged", "score_sde/plumbing/timing.py",
      "            else:\n                cur_b = max(cur_b, b)\n",
      "            else:\n                total += b - a\n",
      "tests/test_user_facing.py::test_timer_keeps_compilation_apart"),
    M("divergence stop: threshold 1e15 times too high", "score_sde/drivers/train.py",
      "abs(value) > factor * abs(self.loss_sum / self.loss_count)",
      "abs(value) > 1e15 * factor * abs(self.loss_sum / self.loss_count)",
      "tests/test_reliability.py::test_a_finite_exploding_loss_stops_training"),
    # --- the looser checks ------------------------------------------------------------------------------
    M("replace: the observation ignored (the hook replaces nothing)", "score_sde/inverse.py",
      "return jnp.where(self.mask > 0, y_t.astype(x.dtype), x)", "return x",
      "tests/test_inverse.py::test_easy_case_both_methods_right_ve"),
    M("colorize: the unknown coordinates' reverse-step noise halved", "score_sde/inverse.py",
      "x_s = jnp.where(mask > 0, known, mu + tau * z)", "x_s = jnp.where(mask > 0, known, mu + 0.5 * tau * z)",
      "tests/test_inverse.py::test_colorize_keeps_the_gray_level_and_matches_the_conditional"),
    M("signal: a partial likelihood_*.json written per batch", "score_sde/drivers/evaluate.py",
      "            bar.update(len(logp))\n",
      "            bar.update(len(logp))\n"
      "            os.makedirs(os.path.join(workdir, 'likelihood'), exist_ok=True)\n"
      "            outputs.write_json(os.path.join(workdir, 'likelihood', f'likelihood_{step}_partial.json'), "
      "{'n': len(bpds)})\n",
      "tests/test_user_facing.py::test_a_signal_during_a_mode_is_one_line_and_leaves_no_partial_output"),
    M("Ctrl-C: the stop request honoured only at the last step", "score_sde/drivers/train.py",
      "        if stop:\n", "        if stop and step >= tc.n_iters - 1:\n",
      "tests/test_reliability.py::test_ctrl_c_stops_between_steps_after_the_save"),
    M("CLD: log q(v0) with the wrong variance", "score_sde/cld.py",
      "return self.join(x0, v0), _gauss_logp(v0, var)", "return self.join(x0, v0), _gauss_logp(v0, 1.5 * var)",
      "tests/test_cld.py::test_likelihood_of_joint_state_and_velocity_elbo"),
    M("split_to_uint8: levels scaled by 256 / L", "score_sde/metrics/evaluation.py",
      "(255.0 / (num_levels - 1))", "(256.0 / num_levels)",
      "tests/test_data.py::test_split_to_uint8_for_any_bit_depth"),
)

_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "runs", "benchmarks/out")


def copy_repo(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copies the files git tracks or would track (not ignored) from src to dst."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                         capture_output=True, check=True).stdout
    for rel in filter(None, out.decode().split("\0")):
        s, d = src / rel, dst / rel
        if s.is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


@contextlib.contextmanager
def applied(mutant: Mutant, root: pathlib.Path):
    """Plants `mutant` in the copy at `root` for the duration of the block, then restores the file."""
    path = root / mutant.file
    original = path.read_bytes()
    text = original.decode()
    count = text.count(mutant.old)
    if count != 1:
        raise StaleMutant(f"{mutant.file}: the old text occurs {count} times (expected once): {mutant.old!r}")
    path.write_text(text.replace(mutant.old, mutant.new, 1))
    try:
        yield path
    finally:
        path.write_bytes(original)


def run_test(test: str, root: pathlib.Path, timeout: float) -> tuple[str, float, str]:
    """(outcome "passed" / "failed" / "error", seconds, last lines of output) of one pytest node in root."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", time.perf_counter() - start, f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    tail = "\n".join(failed[:2] or lines[-3:])
    outcome = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
    return outcome, seconds, tail


def check(mutant: Mutant, root: pathlib.Path, timeout: float) -> tuple[str, float, str]:
    """("caught" / "missed" / "error" / "stale", seconds, detail) for one mutant in the copy at root."""
    try:
        with applied(mutant, root):
            outcome, seconds, tail = run_test(mutant.test, root, timeout)
    except StaleMutant as err:
        return "stale", 0.0, str(err)
    return {"failed": "caught", "passed": "missed"}.get(outcome, "error"), seconds, tail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="*", default=(), help="run the mutants whose name contains any of these")
    parser.add_argument("--skip", nargs="*", default=(), help="leave out the mutants whose name contains any of these")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    parser.add_argument("--root", default=str(ROOT), help="the repository to copy (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if (not args.only or any(s in m.name for s in args.only))
              and not any(s in m.name for s in args.skip)]
    if args.list:
        for m in chosen:
            print(f"{m.name}  [{m.file}]  -> {m.test}")
        return 0
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="score_sde_mutants_"))
    tally: dict[str, int] = {}
    try:
        copy_repo(pathlib.Path(args.root), tmp)
        for m in chosen:
            verdict, seconds, detail = check(m, tmp, args.timeout)
            tally[verdict] = tally.get(verdict, 0) + 1
            print(f"{verdict:6s} {seconds:6.1f}s  {m.name}  -> {m.test}", flush=True)
            if verdict in ("error", "stale", "caught"):
                print("        " + detail.replace("\n", "\n        "), flush=True)
    finally:
        if args.keep:
            print(f"copy kept at {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("tally: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())) + f" (of {len(chosen)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
