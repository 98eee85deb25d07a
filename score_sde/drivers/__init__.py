"""Drivers: what `main.py` runs. They read a config, call the library, and write to a workdir.

    cli         parses and checks a config, restores what a mode needs, dispatches to a driver
    train       TrainState, the pmapped training step, EMA, the training loop
    evaluate    sample / likelihood / eval modes
    classifier  the noisy classifier's training (classifier guidance)
    edit        the edit mode (inpaint, colourise, SDEdit, interpolate) on dataset examples

Parallelism (`pmap`, `lax.pmean`) lives here and nowhere in the library below.
"""
