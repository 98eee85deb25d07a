"""Command line: train a score model, sample from it, compute its bits/dim, evaluate checkpoints, edit examples.

    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=train
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=sample --config.sampling.method=ode
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=likelihood
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=eval --checkpoints=all
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=edit --config.edit.task=inpaint
    python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=train_classifier
    python main.py --config=configs/digits_cond.py --workdir=runs/digits_cond --mode=sample --config.sampling.class_label=-1
    python main.py --config=configs/toy_distill.py --workdir=runs/toy_distill --mode=distill
    python main.py --config=configs/toy_distill.py --workdir=runs/toy_distill --mode=sample --config.sampling.student.n_steps=2
    python main.py --config=configs/digits_cascade.py --workdir=runs/digits_cascade --mode=cascade

Any config key can be overridden with --config.<key>=<value>. Errors a user can cause (bad flags
or overrides included) print one line `error: ...` and exit with status 2, before anything is
written to the workdir.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

# What loading a config file and applying `--config.<key>=<value>` overrides raises on bad input.
_CONFIG_ERRORS = (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError)


def _fail(message: str):
    """One `error: ...` line on stderr (whitespace collapsed), exit status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


def _config_error(e: BaseException, argv: list[str]) -> str:
    """A readable line for a config-loading error; unknown keys name the offending override."""
    if not isinstance(e, (AttributeError, KeyError)):
        return str(e)
    inner = e
    while isinstance(inner, BaseException) and inner.args:  # AttributeError(KeyError("'k'\nDid you mean ..."))
        inner = inner.args[0]
    key = str(inner).split("\n")[0].strip("'\"")
    bad = [a.split("=", 1)[0] for a in argv if a.lstrip("-").startswith("config.") and
           a.split("=", 1)[0].split(".")[-1] == key]
    message = f"unknown config key {key!r} in {', '.join(bad) or 'the overrides'}. {str(inner)[len(key) + 2:]}"
    for b in bad:
        message += _sampling_hint(b.lstrip("-").split("."), key)
    return message.strip()


def _sampling_hint(parts: list[str], key: str) -> str:
    """What is valid instead of an unknown `config.sampling...` key (parts of the flag name), or ""."""
    if parts[:2] != ["config", "sampling"] or len(parts) not in (3, 4):
        return ""
    from score_sde import solvers

    if len(parts) == 3:  # the old flat form, --config.sampling.n_steps
        from configs.default import get_default_configs

        having = [n for n in solvers.names() if key in solvers.options(n)]
        keys = sorted(k for k, v in get_default_configs().sampling.items() if not hasattr(v, "keys"))
        valid = (f" Keys of sampling: {', '.join(keys)}; sampler options: --config.sampling.<method>.<option> "
                 f"for the samplers {', '.join(solvers.names())}.")
        if not having:
            return valid
        who = "every sampler" if having == solvers.names() else f"the samplers {', '.join(having)}"
        return (f" Sampler options are set per sampler: --config.sampling.<method>.{key}=... ({key} is an option of "
                f"{who}, e.g. --config.sampling.{having[0]}.{key}).{valid}")
    if parts[2] not in solvers.SAMPLERS:
        return ""
    hint = f" Options of sampler {parts[2]!r}: {', '.join(solvers.options(parts[2]))}."
    if key == "nfe":
        hint += (f" {parts[2]} has no nfe= preset (those are: {', '.join(solvers.budget_names())}); set its "
                 f"n_steps instead.")
    return hint


try:  # the default config file is loaded, with the overrides applied, when the flag is defined
    config_flags.DEFINE_config_file("config", "configs/digits_vp.py", "Experiment config file; override any key with "
                                    "--config.<key>=<value>. Every key with its value and help: --mode=show_config.",
                                    lock_config=True)
except _CONFIG_ERRORS as err:
    _fail(_config_error(err, sys.argv))
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and results.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "likelihood", "eval", "edit", "train_classifier", "distill",
                                   "cascade", "show_config"],
                  "What to run; show_config prints every config key with its value and help (no --workdir needed).")
flags.DEFINE_string("checkpoints", "latest", "eval/sample/likelihood: 'latest', 'all', or steps like 1000,2000.")
FLAGS = flags.FLAGS


def _config_path(argv: list[str]) -> str | None:
    """The value of --config in argv (`--config=path` or `--config path`), or None."""
    for i, a in enumerate(argv):
        if a in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(("--config=", "-config=")):
            return a.split("=", 1)[1]
    return None


def check_config_file(path: str) -> None:
    """Exits with one `error:` line when the config file is missing, has a syntax error or defines
    no get_config() (checked from its source, before ml_collections imports it)."""
    import ast

    file = path.split(":", 1)[0]  # ml_collections allows path:argument
    try:
        with open(file) as f:
            tree = ast.parse(f.read(), filename=file)
    except OSError as e:
        _fail(f"cannot read config file {file}: {e.strerror or e}")
    except SyntaxError as e:
        _fail(f"config file {file}, line {e.lineno}: syntax error: {e.msg}")
    if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
        _fail(f"config file {file} defines no get_config() function; a config file returns its "
              "ml_collections.ConfigDict from get_config() (see configs/default.py)")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with bad flags and overrides reported as one `error:` line."""
    path = _config_path(argv[1:])
    if path is not None:
        check_config_file(path)
    try:
        return FLAGS(argv)
    except _CONFIG_ERRORS as e:
        _fail(_config_error(e, argv))
    except Exception as e:  # noqa: BLE001  (the config file's own code raised while loading)
        _fail(f"loading the config file {path or 'configs/digits_vp.py'} failed: {type(e).__name__}: {e}")


def show_config(config) -> None:
    """Prints every key of the loaded config (overrides applied) as `key = value  # help`.

    The help comes from the comments of configs/default.py and of the config file, and from each
    sampler's docstring for `sampling.<method>.<option>`.
    """
    from configs import default
    from score_sde.plumbing import config_help

    key_help = {}
    for path in (_config_path(sys.argv[1:]), default.__file__):  # default.py's wording wins
        if path:
            with open(path.split(":", 1)[0]) as f:
                key_help.update(config_help.comment_help(f.read()))
    print(f"# {_config_path(sys.argv[1:]) or 'configs/digits_vp.py'}; set a key with --config.<key>=<value>")
    print("\n".join(config_help.describe(config, key_help)))


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises here
    except _CONFIG_ERRORS as e:
        _fail(_config_error(e, sys.argv))
    except Exception as e:  # noqa: BLE001  (the config file's own code raised while loading)
        _fail(f"loading the config file failed: {type(e).__name__}: {e}")
    if FLAGS.mode == "show_config":
        show_config(config)
        return
    if FLAGS.workdir is None:
        _fail(f"--workdir is required for --mode={FLAGS.mode} (the directory for checkpoints, logs and outputs)")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from score_sde import config_utils
    from score_sde.drivers import cli

    others = config_utils.sampler_overrides_for_other_samplers(sys.argv, config.sampling.method)
    if others:
        method = config.sampling.method
        _fail(f"{', '.join(others)}: an option of another sampler than sampling.method={method!r}, which would "
              f"ignore it; set --config.sampling.method, or {method}'s own options --config.sampling.{method}.<option>")

    sys.exit(cli.run(config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoints))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
