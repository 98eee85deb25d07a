#!/usr/bin/env bash
# The README's first command: train a score model on the embedded digits data, sample from it,
# and measure its test bits/dim (about ten minutes on 2 CPU cores). Re-running resumes training.
#   bash examples/digits.sh [WORKDIR]   (default runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR="${1:-runs/digits}"
CONFIG=configs/digits_vp.py
python main.py --config=$CONFIG --workdir="$WORKDIR" --mode=train
python main.py --config=$CONFIG --workdir="$WORKDIR" --mode=sample
python main.py --config=$CONFIG --workdir="$WORKDIR" --mode=likelihood
echo "samples: $WORKDIR/samples/  bits/dim: $WORKDIR/likelihood/"
