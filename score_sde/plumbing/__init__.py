"""Plumbing: what drivers need that is not numerics.

    checkpoint     orbax checkpoints: atomic saves, restore with a clear error, pruning, the run lock
    outputs        never-overwritten output names, atomic writes, `results.jsonl`
    logging_utils  metric logger (stdout, JSON lines, TensorBoard), sample grids
    timing         compile and run seconds apart
    schema         the declared type and range of every numeric config key
"""
