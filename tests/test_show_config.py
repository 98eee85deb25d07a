"""`main.py --mode=show_config`: every config key with its value and a help line (score_sde.plumbing.config_help)."""

import os
import pathlib
import re
import subprocess
import sys

from configs.default import get_default_configs
from score_sde import solvers
from score_sde.plumbing import config_help

ROOT = pathlib.Path(__file__).resolve().parents[1]


def leaves(config, prefix=""):
    out = []
    for key, value in config.items():
        out += leaves(value, f"{prefix}{key}.") if hasattr(value, "items") else [f"{prefix}{key}"]
    return out


def test_every_key_once_and_every_sampler_option_with_help():
    """One `key = value` line per leaf key; every option of every sampler (nfe included) has a help
    line from the sampler's docstring; commented keys of configs/default.py carry their comment."""
    config = get_default_configs()
    key_help = config_help.comment_help((ROOT / "configs" / "default.py").read_text())
    lines = config_help.describe(config, key_help)
    assert [line.split(" = ")[0] for line in lines] == leaves(config)
    for name in solvers.names():
        for option in config.sampling[name]:
            line = next(x for x in lines if x.startswith(f"sampling.{name}.{option} = "))
            assert "  # " in line and len(line.split("  # ", 1)[1]) > 5, line
    text = "\n".join(lines)
    assert "sampling.unipc.nfe = None (int)  # nfe alone" in text and "sampling.ode.eps = None (float)  # " in text
    assert "\ntraining.n_iters = 1000\n" in text
    assert "model.ema_warmup = True  # EMA decay min(ema_rate, (1 + n) / (10 + n))" in text
    assert key_help["eval.stats_path"].endswith("cached as <workdir>/inception_<dataset>_train_<sha1[:12]>.npz")  # continued


def test_docstring_entries_with_several_names_and_continuations():
    doc = """Sampler.

    Attributes:
      rtol, atol: tolerances
        of the controller.
      n_steps: steps.

    Returns:
      nothing: not an option.
    """
    got = config_help._docstring_entries(doc)
    both = "tolerances of the controller."
    assert got == {"rtol": both, "atol": both, "n_steps": "steps."}


def test_show_config_on_the_command_line():
    """No --workdir needed; overrides are applied; exit 0; one line per key after the header."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "main.py", "--config=configs/digits_cond.py", "--mode=show_config",
           "--config.sampling.unipc.nfe=7"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# configs/digits_cond.py")
    assert "sampling.unipc.nfe = 7  # nfe alone" in proc.stdout
    assert "data.num_classes = 10  # > 0: class-conditional" in proc.stdout  # default.py's wording
    assert len(lines) - 1 == len(leaves(get_default_configs()))
    quoted = re.findall(r"`(sampling\.[\w.]+ = [^`]+  # [^`]+)`", (ROOT / "README.md").read_text())  # README example
    assert quoted and all(q in lines for q in quoted), quoted
