"""--mode=cascade (score_sde.drivers.cascade) and data.downsample.

The chain is checked with analytic stand-ins for the two trained models (exact scores, no network):
a Gaussian base model at 4x4, and an "SR model" whose p(x | low_res) is N(nearest-upsample(low_res),
0.01^2 I), so a correct chain gives area_downsample(samples) = the SR stage's input = base sample +
aug_level e with the documented noise e.
"""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from configs import digits_base4, digits_cascade, digits_vp
from score_sde import data, image_to_image as i2i
from score_sde.drivers import cascade, cli
from score_sde.plumbing import outputs
from score_sde.plumbing.restore import Loaded

SDE = ss.VPSDE()
SR_STD = 0.01  # the analytic SR model's std around the upsampled low-res input


def _gaussian_score(sde, mean, std0, x, t):
    """Exact score of N(mean, std0^2 I) perturbed to time t by `sde`."""
    a = sde.marginal_prob(jnp.ones_like(x), t)[0]
    s = sde.marginal_prob(x, t)[1].reshape((-1,) + (1,) * (x.ndim - 1))
    return -(x - a * mean) / (a ** 2 * std0 ** 2 + s ** 2)


class GaussianBase(eqx.Module):
    """The base model: images N(mean, 0.3^2 I) of side 4."""

    mean: jax.Array

    def __call__(self, x, t):
        return _gaussian_score(SDE, self.mean, 0.3, x, t)


class UpsamplingSR(eqx.Module):
    """The SR model: x | low_res ~ N(nearest-upsample(low_res, 2), SR_STD^2 I) (aug_level unused)."""

    def __call__(self, x, t, cond=None):
        m = jnp.repeat(jnp.repeat(cond["low_res"], 2, axis=1), 2, axis=2)
        return _gaussian_score(SDE, m, SR_STD, x, t)


def _loaded():
    mean = jnp.asarray(np.linspace(-0.8, 0.8, 16).reshape(4, 4, 1), jnp.float32)
    return Loaded(GaussianBase(mean), SDE, (4, 4, 1), 7), Loaded(UpsamplingSR(), SDE, (8, 8, 1), 9)


def _noise(seed, n, shape):
    """e of row i: normal(fold_in(fold_in(PRNGKey(seed + 3), i), 8)) (the documented key)."""
    return np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(
        jax.random.PRNGKey(seed + 3), i), 8), shape)) for i in range(n)])


def _check_chain(out, config, level):
    low, high, cond = out["base_samples"], out["samples"], out["cond_low_res"]
    n = len(high)
    assert low.shape == (n, 4, 4, 1) and high.shape == (n, 8, 8, 1) and cond.shape == (n, 4, 4, 1)
    np.testing.assert_array_equal(out["cond_aug_level"], np.full(n, level, np.float32))
    # the SR stage's input is exactly the base samples plus level x the documented noise
    np.testing.assert_allclose(cond, low + level * _noise(config.seed, n, (4, 4, 1)), atol=1e-5)
    # the SR samples are consistent with that input (the analytic SR model), not with the clean base samples
    down = np.asarray(i2i.area_downsample(jnp.asarray(high), 2))
    assert np.sqrt(np.mean((down - cond) ** 2)) < 0.03
    assert np.sqrt(np.mean((down - low) ** 2)) > 0.3 * level


def test_cascade_chain_and_its_outputs(tmp_path, monkeypatch, capsys):
    """--mode=cascade through cli.run (the checkpoints' restore replaced by the analytic models): the npz
    holds base_samples (distributed as the base model's), samples and the SR stage's input, which is the
    base samples + aug_level e with e from the documented keys, and the SR samples are consistent with
    it; a grid (base row over SR row), a JSON summary and a results.jsonl row."""
    for run in ("base", "sr"):
        os.makedirs(tmp_path / run / "checkpoints" / "3")
    base, sr = _loaded()
    monkeypatch.setattr(cascade.restore, "load_score_fn",
                        lambda config, workdir, shape, step=None: base if workdir.endswith("base") else sr)
    c = digits_cascade.get_config()
    c.sampling.dpm_solver.nfe = 10
    c.sampling.update(num_samples=6, batch_size=6, aug_level=0.25)
    c.cascade.update(base_workdir=str(tmp_path / "base"), sr_workdir=str(tmp_path / "sr"))
    assert cli.run(c, str(tmp_path / "out"), "cascade") == 0
    assert "done: --mode=cascade step 9: 6 samples, base step 7 then SR at aug_level 0.25" in capsys.readouterr().err
    (row,) = outputs.read_results(str(tmp_path / "out"))
    assert row["mode"] == "cascade" and row["figures"]["base_nfe"] == row["figures"]["sr_nfe"] == 10 and row["figures"]["aug_level"] == 0.25
    npz, png, js = row["files"]
    with np.load(npz) as f:
        assert sorted(f.files) == ["base_samples", "cond_aug_level", "cond_low_res", "samples"]
        _check_chain(dict(f), c, 0.25)
        assert np.abs(f["base_samples"]).max() <= 1.0  # clipped to the data range before the SR stage
        resid = f["base_samples"] - np.asarray(base.score_fn.mean)
    assert 0.15 < resid.std() < 0.45  # 96 values of N(0, 0.3^2)
    from PIL import Image
    assert Image.open(png).size == ((6 * 9 + 1) * 4, (2 * 9 + 1) * 4)  # base row over SR row
    assert json.load(open(js))["base_step"] == 7


def _fails(config, workdir, capsys, match):
    assert cli.run(config, workdir, "cascade") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and match in err, err


def test_bad_cascades_are_one_line_errors(tmp_path, capsys):
    c = digits_cascade.get_config()
    os.makedirs(tmp_path / "sr" / "checkpoints" / "3")
    out = str(tmp_path / "out")
    c.cascade.update(base_workdir=str(tmp_path / "none"), sr_workdir=str(tmp_path / "sr"))
    _fails(c, out, capsys, f"cascade.base_workdir={tmp_path / 'none'}: no checkpoints in")
    c.cascade.base_workdir, c.cascade.sr_workdir = str(tmp_path / "sr"), ""
    _fails(c, out, capsys, "cascade.sr_workdir is empty")
    wrong = tmp_path / "eight.py"
    wrong.write_text("from configs import digits_vp\n\ndef get_config():\n    return digits_vp.get_config()\n")
    c.cascade.update(base_config=str(wrong), sr_workdir=str(tmp_path / "sr"))
    _fails(c, out, capsys, "makes 8x8x1 images but the SR model's low-res input is 4x4x1")
    c.cascade.base_config = str(tmp_path / "missing.py")
    _fails(c, out, capsys, "is not a file")
    _fails(digits_vp.get_config(), out, capsys, "the config must be the SR model's")
    assert not os.path.exists(out)  # nothing written


def test_data_downsample_is_the_area_downsample_of_the_images():
    """data.downsample=2: the pipeline's images are area_downsample of the full-size ones (same
    dequantisation noise), of the shape the split reports; a wrong image_size is a one-line error."""
    full, low = digits_vp.get_config(), digits_base4.get_config()
    assert (low.data.downsample, low.data.image_size) == (2, 4)
    assert data.load_split(low, "test").data_shape == (4, 4, 1)
    for dq in (False, True):
        x8 = next(data.iterate_once(full, "test", batch_size=32, dequantize=dq))
        x4 = next(data.iterate_once(low, "test", batch_size=32, dequantize=dq))
        np.testing.assert_allclose(x4, np.asarray(i2i.area_downsample(jnp.asarray(x8), 2)), atol=1e-6)
    assert next(data.get_dataset(low, "train", batch_size=16)).shape == (16, 4, 4, 1)
    low.data.image_size = 8
    with pytest.raises(ValueError, match="data.downsample=2 needs them divisible by it and data.image_size=4"):
        data.load_split(low, "test")
    low.data.update(image_size=4, downsample=3)
    with pytest.raises(ValueError, match="data.downsample=3 needs them divisible by it"):
        data.load_split(low, "test")
