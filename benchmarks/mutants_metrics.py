"""Planted bugs in score_sde.metrics, each run against the test that claims to catch it (issue 30).

Each mutant is (file, old text, new text, test). The script copies the repository to a temporary
folder, applies one mutant at a time, runs only its test and prints "caught" (the test failed) or
"missed". Not part of CI (minutes); run before resolving an issue that touches the metrics:

    PYTHONPATH=. python benchmarks/mutants_metrics.py            # all
    PYTHONPATH=. python benchmarks/mutants_metrics.py eps_1e-5    # by name

Equivalent mutants are left out: the clip of the TF-2015 input to [-1, 0.9921875] and the clamp
of TF1's source coordinate at the last pixel change nothing for uint8 images (bilinear weights
stay convex; the next-pixel index is clamped anyway), so no correct test can catch them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
T = "tests/test_metrics.py::"
INC, EV, SC = "score_sde/metrics/inception.py", "score_sde/metrics/evaluation.py", "score_sde/metrics/scores.py"

MUTANTS = [  # name, file, old, new, test
    ("pool_padding_counted", INC, "count_include_pad=False)", "count_include_pad=True)",
     T + "test_flax_inception_matches_pytorch_fid_golden"),
    ("avg_pool_in_Mixed_7c", INC, 'InceptionE(max_pool=True, name="Mixed_7c")', 'InceptionE(name="Mixed_7c")',
     T + "test_flax_inception_matches_pytorch_fid_golden"),
    ("no_2x_minus_1", INC, "return 2.0 * x01 - 1.0", "return x01",
     T + "test_flax_inception_matches_pytorch_fid_golden"),
    ("eps_1e-5", INC, "BN_EPS = 1e-3", "BN_EPS = 1e-5", T + "test_flax_inception_matches_pytorch_fid_golden"),
    ("fid_reference_vs_itself", EV, '"fid": F.fid(stats, ref_stats)', '"fid": F.fid(ref_stats, ref_stats)',
     T + "test_eval_reports_fid_kid_is"),
    ("kid_samples_vs_themselves", EV, "F.kid(feats, ref_kid)", "F.kid(feats, feats)",
     T + "test_eval_reports_fid_kid_is"),
    ("precision_recall_swapped", EV, "F.precision_recall(ref_kid, feats, k=PR_K)",
     "F.precision_recall(feats, ref_kid, k=PR_K)", T + "test_eval_reports_fid_kid_is"),
    ("reference_of_other_weights_used", EV, "if sha1 is not None and net.sha1 and sha1 != net.sha1:", "if False:",
     T + "test_eval_reports_fid_kid_is"),
    ("tf2015_scaling_2x_minus_1", INC, "x01 * (255.0 / 128.0) - 1.0", "x01 * 2.0 - 1.0",
     T + "test_tf2015_matches_the_torchscript_module_and_its_pipeline"),
    ("tf2015_half_pixel_resize", INC, 'half_pixel=self.variant == "pytorch_fid"', "half_pixel=True",
     T + "test_tf2015_matches_the_torchscript_module_and_its_pipeline"),
    ("tf2015_bn_gamma_not_one", "score_sde/metrics/torchscript.py",
     'flat[("params", *mods, "bn", "scale")] = np.ones(', 'flat[("params", *mods, "bn", "scale")] = 1.01 * np.ones(',
     T + "test_tf2015_matches_the_torchscript_module_and_its_pipeline"),
    ("knn_k_off_by_one", SC, "np.partition(d, k - 1, axis=1)[:, k - 1]", "np.partition(d, k, axis=1)[:, k]",
     T + "test_precision_recall_is_the_knn_manifold_rule"),
    ("knn_self_as_neighbour", SC, "d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf",
     "pass",
     T + "test_precision_recall_is_the_knn_manifold_rule"),
    ("resize_tf_half_pixel_source", INC, "np.minimum(np.arange(n_out) * (n_in / n_out), n_in - 1.0)",
     "np.minimum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, n_in - 1.0)", T + "test_resize_matches_torch_bilinear"),
]


def _copy(dst: str) -> None:
    for name in ("score_sde", "tests", "configs", "benchmarks"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dst, name),
                        ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    for name in ("pyproject.toml", "main.py"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst)


def run(mutant) -> str:
    name, path, old, new, test = mutant
    with tempfile.TemporaryDirectory() as d:
        _copy(d)
        target = os.path.join(d, path)
        text = open(target).read()
        if text.count(old) < 1:
            return "NOT APPLIED (text not found)"
        open(target, "w").write(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": d}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test], cwd=d,
                           env=env, capture_output=True, text=True)
        return "caught" if r.returncode == 1 else ("missed" if r.returncode == 0 else f"error (rc {r.returncode})")


def main(names: list[str]) -> int:
    chosen = [m for m in MUTANTS if not names or m[0] in names]
    tally = {}
    for m in chosen:
        t = time.time()
        result = run(m)
        tally[result] = tally.get(result, 0) + 1
        print(f"{m[0]:28s} {result:8s} ({time.time() - t:.0f} s)  {m[4].split('::')[1]}", flush=True)
    print("tally:", ", ".join(f"{k} {v}" for k, v in tally.items()))
    return 0 if set(tally) <= {"caught"} else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
