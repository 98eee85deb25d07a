"""The path-error benchmark (benchmarks/path_error.py) on a small case: its figures are consistent and can fail."""

import pytest

from benchmarks import path_error


@pytest.mark.slow
def test_path_error_small(x64):
    """2-D mixture, VP, n = 200, NFE 10 and 20, three samplers.

    Measured (n = 2000, the benchmark's --quick): ddim 0.108 / 0.058, dpm_solver++ 2M (time_quadratic)
    0.027 / 0.0079, 3S (time_quadratic) 0.038 / 0.0037, UniPC-2 bh2 (time_quadratic) 0.0185 / 0.0026.
    Asserted: every error falls from 10 to 20 NFE, NFE is exact, at 20 NFE 3S is below 0.006 and 5x below
    DDIM, and at 10 NFE UniPC is below 3S.
    """
    labels = ["ddim (time_uniform)", "dpm_solver++ 3S (time_quadratic)", "unipc 2 bh2 (time_quadratic)"]
    candidates = {k: path_error.CANDIDATES[k] for k in labels}
    rows = path_error.path_errors(path_error.mixture_2d(), path_error.SDES["VP"], candidates, (10, 20), n=200)
    for label, ((nfe10, e10), (nfe20, e20)) in rows.items():
        assert (nfe10, nfe20) == (10, 20) and e20 < e10, (label, rows[label])
    ddim, s3 = rows[labels[0]][1][1], rows[labels[1]][1][1]
    assert s3 < 0.006 and 5 * s3 < ddim, rows
    assert rows[labels[2]][0][1] < rows[labels[1]][0][1], rows
