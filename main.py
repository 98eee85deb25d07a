"""Command line: train a score model, sample from it, compute its bits/dim, evaluate checkpoints.

    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=train
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=sample --config.sampling.method=ode
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=likelihood
    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=eval --checkpoints=all

Any config key can be overridden with --config.<key>=<value>. Errors a user can cause print one
line naming the problem and exit with status 2, before anything is written to the workdir.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/digits_vp.py", "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and results.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "likelihood", "eval"], "What to run.")
flags.DEFINE_string("checkpoints", "latest", "eval/sample/likelihood: 'latest', 'all', or steps like 1000,2000.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from score_sde import cli

    sys.exit(cli.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.checkpoints))


if __name__ == "__main__":
    app.run(main)
