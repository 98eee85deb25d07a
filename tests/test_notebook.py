"""Executes notebooks/quickstart.ipynb with nbclient in its small configuration (QUICKSTART_SMALL=1)."""

import json
import pathlib

import ipykernel  # noqa: F401  (the kernel nbclient starts; a dev dependency, never skipped)
import nbclient
import nbformat
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_notebook_outputs_are_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_runs(monkeypatch):
    monkeypatch.setenv("QUICKSTART_SMALL", "1")  # inherited by the kernel: tiny n_iters and sample counts
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell
    cell = next(c for c in nb.cells if "summary" in c.metadata.get("tags", []))
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    summary = json.loads(text[text.index("{"): text.rindex("}") + 1])
    # The probability-flow ODE with the exact mixture score recovers the exact density
    # (tsit5, rtol = atol = 1e-5, eps = 1e-5: errors ~1e-3 nats in float32).
    assert summary["oracle_max_abs_error"] < 0.05
    # A 200-step model is rough but must be a density near the data: within 1 nat per point on average.
    assert abs(summary["model_mean_logp"] - summary["exact_mean_logp"]) < 1.0
    assert summary["model_nfe"] > 0
    for name in ("euler_maruyama", "pc", "ode", "dpm_solver"):
        assert summary["sample_mean_logp"][name] > summary["exact_mean_logp"] - 3.0, name
