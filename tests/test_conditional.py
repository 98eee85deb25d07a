"""Class labels end to end: labelled batches, the class embedding, label dropout, the conditional
train step under pmap, the noise-conditional classifier, and guided sampling from the command line.

Small by design: tiny MLPs, the analytic 8-Gaussian mixture, 2 forced CPU devices (conftest.py).
"""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.default import get_default_configs
from score_sde import config_utils, data, losses, models
from score_sde.drivers import classifier, evaluate, train
from score_sde.plumbing import schema

from helpers import assert_sgd_step_averages, write_cifar_files

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config_with(dataset="digits", num_classes=10, **data_fields):
    c = get_default_configs()
    c.data.dataset, c.data.num_classes = dataset, num_classes
    for k, v in data_fields.items():
        setattr(c.data, k, v)
    return c


# --- labels in the data pipeline -------------------------------------------------------------
def test_digits_batches_carry_labels_consistent_with_images():
    """Every (image, label) of a labelled digits batch is a (test-split image, its sklearn target) pair."""
    c = config_with()
    split = data.load_split(c, "test")
    pairs = {(data.scale(split.source.array[i], 17, True).tobytes(), int(split.labels[i]))
             for i in range(len(split.source))}
    it = data.get_dataset(c, "test", batch_size=64)
    for _ in range(6):  # 384 > 300 examples: crosses an epoch boundary
        batch = next(it)
        assert set(batch) == {"image", "cond"} and set(batch["cond"]) == {"label"}
        assert batch["image"].shape == (64, 8, 8, 1) and batch["cond"]["label"].shape == (64,)
        assert batch["cond"]["label"].dtype == np.int32 and 0 <= batch["cond"]["label"].min() and batch["cond"]["label"].max() <= 9
        assert all((x.tobytes(), int(y)) in pairs for x, y in zip(batch["image"], batch["cond"]["label"]))
    once = list(data.iterate_once(c, "test", batch_size=128, loaded=split, with_labels=True))
    np.testing.assert_array_equal(np.concatenate([b["cond"]["label"] for b in once]), split.labels)
    # unconditional configs keep plain arrays
    assert isinstance(next(data.get_dataset(config_with(num_classes=0), "test", batch_size=8)), np.ndarray)


def test_toy_gmm_labels_are_the_component_ids():
    """The points are the same as without labels, and >= 97 % lie nearest to their component's mean
    (the means are 1.53 apart, std 0.2: a point is nearer another mean with probability < 1e-4 per axis)."""
    c = config_with("toy_gmm", 8, num_levels=0)
    split = data.load_split(c, "train")
    np.testing.assert_array_equal(split.source.array, data.load_split(config_with("toy_gmm", 0, num_levels=0),
                                                                      "train").source.array)
    batch = next(data.get_dataset(c, "train", batch_size=1000))
    means = data.toy_gmm_params()[1]
    nearest = np.argmin(((batch["image"][:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == batch["cond"]["label"]) >= 0.97
    assert set(np.unique(split.labels)) == set(range(8))


@pytest.mark.parametrize("extracted", [True, False])
def test_cifar10_labels_from_the_archive(tmp_path, extracted):
    """Labels come from b'labels' of each batch file; here label = first pixel value mod 10."""
    rng = np.random.default_rng(0)
    files = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        flat = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        files[name] = pickle.dumps({b"data": flat, b"labels": [int(v) % 10 for v in flat[:, 0]]})
    write_cifar_files(tmp_path, files, extracted)
    c = config_with("cifar10", 10, data_dir=str(tmp_path), image_size=32, num_channels=3, num_levels=256)
    split = data.load_split(c, "train")
    assert split.num_classes == 10 and split.labels.shape == (15,)
    np.testing.assert_array_equal(split.labels, split.source.array[:, 0, 0, 0] % 10)  # pixel (0,0) R = flat[0]


def test_image_folder_subfolders_are_classes(tmp_path):
    """Sorted subfolder names -> 0, 1, 2; each image's label matches its folder (grey value per class)."""
    for k, name in enumerate(["ants", "bees", "cats"]):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8), 60 * k + i, np.uint8)).save(tmp_path / name / f"{i}.png")
    c = config_with("image_folder", 3, data_dir=str(tmp_path), image_size=8, num_channels=1, num_levels=256,
                    test_fraction=0.25)
    for split_name in ("train", "test"):
        split = data.load_split(c, split_name)
        np.testing.assert_array_equal(split.labels, split.source.array[:, 0, 0, 0] // 60)
    assert len(data.load_split(c, "train").labels) == 9
    # train/ and test/ layouts: the classes are train/'s subfolders, also where test/ lacks one
    layout = tmp_path / "layout"
    for split_name, names in (("train", ["ants", "bees", "cats"]), ("test", ["bees", "cats"])):
        for name in names:
            (layout / split_name / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 60 * ["ants", "bees", "cats"].index(name), np.uint8)).save(
                layout / split_name / name / "0.png")
    c2 = config_with("image_folder", 3, data_dir=str(layout), image_size=8, num_channels=1, num_levels=256)
    test = data.load_split(c2, "test")
    np.testing.assert_array_equal(test.labels, [1, 2])
    (tmp_path / "loose.png").write_bytes((tmp_path / "ants" / "0.png").read_bytes())  # no longer one folder per class
    with pytest.raises(ValueError, match="no class labels.*num_classes=0"):
        data.load_split(c, "train")


def test_label_config_errors():
    with pytest.raises(ValueError, match="'checkerboard' has no class labels"):
        data.load_split(config_with("checkerboard", 4, num_levels=0), "train")
    with pytest.raises(ValueError, match="has 10 classes but config.data.num_classes=5.*num_classes=10"):
        data.load_split(config_with(num_classes=5), "train")


# --- models ------------------------------------------------------------------------------------
def _init(model, shape):
    return model.init(jax.random.PRNGKey(0), jnp.zeros((2, *shape)), jnp.zeros((2,)))["params"]


def _shapes(model, shape):
    """The parameter tree's shapes (jax.eval_shape: nothing is computed)."""
    return jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda: _init(model, shape)))


@pytest.mark.parametrize("name, shape", [("mlp", (2,)), ("unet", (8, 8, 1)), ("ddpmpp", (8, 8, 1))])
def test_class_embedding_only_when_conditional(name, shape):
    """num_classes=0 leaves the parameter tree exactly as before; K > 0 adds one (K + 1, E) table and
    nothing else; (MLP) y = None is the null class K, and labels change the output."""
    c = get_default_configs()
    c.model.name = name
    if name == "ddpmpp":
        c.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    plain = _shapes(models.get_model(c.model), shape)
    assert _shapes(config_utils.model_from_config(c.model, 0), shape) == plain
    cond_model = config_utils.model_from_config(c.model, 10)
    cond = _shapes(cond_model, shape)
    assert "class_embedding" not in plain and {k: v for k, v in cond.items() if k != "class_embedding"} == plain
    assert cond["class_embedding"]["embedding"][0] == 11
    if name != "mlp":
        return
    cond, plain = _init(cond_model, shape), _init(models.get_model(c.model), shape)
    x, cn = jax.random.normal(jax.random.PRNGKey(1), (2, *shape)), jnp.array([0.5, -1.0])
    cond = jax.tree.map(lambda p: p + 0.01, cond)  # non-zero output layer, so labels matter
    null = cond_model.apply({"params": cond}, x, cn)
    np.testing.assert_allclose(null, cond_model.apply({"params": cond}, x, cn, y=jnp.array([10, 10])), atol=1e-6)
    assert float(jnp.max(jnp.abs(null - cond_model.apply({"params": cond}, x, cn, y=jnp.array([3, 4]))))) > 1e-5
    with pytest.raises(ValueError, match="no class embedding"):
        models.get_model(c.model).apply({"params": plain}, x, cn, y=jnp.array([1, 2]))


def test_label_dropout_rate():
    """20000 examples at rate 0.1: the dropped share is within 5 sigma (0.0106) of 0.1; kept labels unchanged."""
    n = 20_000
    keys = losses.example_keys(jax.random.PRNGKey(3), n)
    y = jnp.arange(n) % 10
    out = np.asarray(losses.drop_labels(keys, y, 10, 0.1))
    dropped = out == 10
    assert abs(dropped.mean() - 0.1) < 5 * np.sqrt(0.1 * 0.9 / n)
    np.testing.assert_array_equal(out[~dropped], np.asarray(y)[~dropped])
    np.testing.assert_array_equal(losses.drop_labels(keys, y, 10, 0.0), y)


# --- training ------------------------------------------------------------------------------------
def toy_config(n_iters=4):
    c = config_with("toy_gmm", 8, num_levels=0)
    c.model.update(name="mlp", hidden=(32, 32), ema_rate=0.9)
    c.training.update(batch_size=16, n_iters=n_iters, snapshot_freq=n_iters, log_freq=2, label_dropout=0.2)
    c.optim.update(lr=3e-3, warmup=0)
    return c


def test_conditional_train_step_under_pmap():
    """The labelled pmapped step (2 devices x 8) equals the jitted single-device step on the batch of 16
    (same per-example keys, so the same dropped labels; rtol 1e-5), with Adam (the configured optimizer)
    and with SGD (helpers.assert_sgd_step_averages: Adam's first step from zero moments sees only the
    gradient's sign, so a psum of the device gradients instead of their pmean passes with Adam alone)."""
    assert jax.local_device_count() == 2
    c = toy_config()
    model = config_utils.model_from_config(c.model, 8)
    sde = config_utils.sde_from_config(c.sde)
    loss_fn = train.loss_fn_from_config(c, model, sde)
    opt, p_step = train.step_for_config(c, model, sde)  # the step train.train uses (cached: compiled once)
    state = train.create_train_state(jax.random.PRNGKey(0), model, opt, (2,))
    shifted = jax.tree.map(lambda p: p + 0.01, state.params)  # a non-zero output layer: labels get gradients
    state = state.replace(params=shifted, ema_params=shifted)
    batch = next(data.get_dataset(c, "train", batch_size=16))
    single, m1 = jax.jit(train.make_train_step(loss_fn, opt, c.model.ema_rate))(state, batch)
    pstate, m2 = p_step(train.replicate(state), jax.tree.map(lambda a: a.reshape(2, 1, 8, *a.shape[1:]), batch))
    multi = train.unreplicate(pstate)
    np.testing.assert_allclose(float(m1["loss"]), train.unreplicate(m2)["loss"][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    moved = np.abs(np.asarray(single.params["class_embedding"]["embedding"])
                   - np.asarray(state.params["class_embedding"]["embedding"])).max()
    assert moved > 1e-4  # the class embedding is trained
    # Adam's first step sees only the gradient's sign: the averaging over devices is checked with SGD
    assert_sgd_step_averages(loss_fn, c.model.ema_rate, state, batch)
    # (train.train on labelled data, prefetch included: test_cli_sample_one_row_per_class trains through main.py)


def test_classifier_learns_the_mixture_posterior(tmp_path):
    """1000 steps on toy_gmm: the test cross-entropy falls from log 8 to within 0.06 nats of the exact
    classifier's (GaussianMixture.class_log_prob_fn) on the same x_t; rerunning resumes."""
    c = toy_config()
    c.classifier.update(nf=16, n_iters=1000, batch_size=128, lr=3e-3, warmup=0, snapshot_freq=1000, log_freq=200,
                        ema_rate=0.9)
    state = classifier.train_classifier(c, str(tmp_path))
    assert int(state.step) == 1000
    model, sde = classifier.classifier_from_config(c), config_utils.sde_from_config(c.sde)
    learned = classifier.ClassifierLogProb(model, {"params": state.ema_params}, sde)
    loaded = classifier.load_classifier(c, str(tmp_path), (2,))
    exact = data.toy_gmm_mixture().class_log_prob_fn(sde)
    batch = next(data.get_dataset(c, "test", batch_size=4000))
    keys = losses.example_keys(jax.random.PRNGKey(5), 4000)
    t, z = losses.draw_time_and_noise(keys, jnp.asarray(batch["image"]),
                                      lambda k: jax.random.uniform(k, (), jnp.float32, 1e-3, 1.0))
    mean, std = sde.marginal_prob(jnp.asarray(batch["image"]), t)
    xt, y = mean + std[:, None] * z, jnp.asarray(batch["cond"]["label"])
    ce_learned, ce_exact = -float(jnp.mean(learned(xt, t, y))), -float(jnp.mean(exact(xt, t, y)))
    np.testing.assert_allclose(loaded(xt, t, y), learned(xt, t, y), rtol=1e-5, atol=1e-5)
    assert ce_exact < 0.8 * np.log(8)  # the task is learnable at small t
    assert ce_learned < ce_exact + 0.06, (ce_learned, ce_exact)  # measured: 1.544 vs 1.525
    c.classifier.n_iters = 1010
    assert int(classifier.train_classifier(c, str(tmp_path)).step) == 1010
    rows = [json.loads(line) for line in open(tmp_path / "classifier" / "metrics.jsonl")]
    assert rows[0]["loss"] > rows[2]["loss"]


# --- sampling configuration and the command line ------------------------------------------------
def test_class_label_validation():
    c = config_with()
    assert schema.check(c) == []
    c.sampling.class_label = -1
    assert schema.check(c) == []
    c.sampling.class_label = 10
    assert schema.check(c) == ["sampling.class_label must be -1 (every class) or a class in 0..9, got 10"]
    c.sampling.class_label, c.sampling.guidance = 2, "both"
    assert schema.check(c) == ["sampling.guidance must be one of free, classifier, got 'both'"]
    u = config_with(num_classes=0)
    u.sampling.class_label = 3
    (problem,) = schema.check(u)
    assert problem.startswith("sampling.class_label=3 needs a class-conditional model, but data.num_classes=0")
    u.sampling.class_label = None
    c.sampling.guidance = "classifier"
    with pytest.raises(classifier.ClassifierNotFoundError, match="--mode=train_classifier"):
        evaluate.load_guidance_classifier(c, "/nonexistent/run", (8, 8, 1))
    np.testing.assert_array_equal(evaluate.sample_labels(u), None)
    c.sampling.class_label, c.sampling.num_samples = -1, 25
    np.testing.assert_array_equal(evaluate.sample_labels(c), np.repeat(np.arange(10), 3))


# --- guided sampling in the driver, with the exact mixture oracle in place of a network -------------------
class _OracleModel(eqx.Module):
    """The exact toy_gmm conditional score with a trained model's call signature: score(x, t, y=None),
    y None = the unconditional score (the null class)."""

    cond: eqx.Module

    def __call__(self, x, t, y=None):
        return self.cond(x, t, y)


def _draw_guided(c, labels, guidance_name, scale, log_prob=None):
    """evaluate.draw_batches (the driver's guided path) with toy_gmm's exact conditional score."""
    gmm, sde = data.toy_gmm_mixture(), config_utils.sde_from_config(c.sde)
    c.sampling.update(method="ddim", guidance=guidance_name, guidance_scale=scale, class_label=0)
    c.sampling.ddim.n_steps = 20
    loaded = evaluate.Loaded(_OracleModel(gmm.conditional_score_fn(sde)), sde, (2,), 0)
    lp = gmm.class_log_prob_fn(sde) if guidance_name == "classifier" else None
    outs = list(evaluate.draw_batches(c, loaded, len(labels), len(labels), 0, labels=labels, log_prob=lp))
    return np.concatenate([x for x, _ in outs])


def test_guided_sampling_follows_the_label_and_the_scale():
    """evaluate.draw_batches with labels (0..7 in turn, 400 samples, ddim 20 steps, 2 devices) and the
    exact toy_gmm oracle as the model: classifier-free at scale 0 (the conditional score) and
    classifier guidance at scale 1 (exact classifier) put >= 97 % of the samples nearest their label's
    mean (measured 1.000 / 1.000); classifier-free at scale -1 (= the unconditional score) and
    classifier guidance at scale 0 put 1/8 there (measured 0.145 / 0.145; asserted within 5 SE of 1/8,
    SE = sqrt(1/8 * 7/8 / 400) = 0.017). Ignoring the labels or the scale fails one of the four."""
    n = 400
    labels = (np.arange(n) % 8).astype(np.int32)
    means = data.toy_gmm_mixture().means
    se = np.sqrt(1 / 8 * 7 / 8 / n)
    for guidance_name, scale, guided in (("free", 0.0, True), ("free", -1.0, False),
                                         ("classifier", 1.0, True), ("classifier", 0.0, False)):
        x = _draw_guided(toy_config(), labels, guidance_name, scale)
        assert x.shape == (n, 2) and np.all(np.isfinite(x))
        nearest = np.argmin(np.sum((x[:, None] - np.asarray(means)[None]) ** 2, -1), axis=1)
        mass = float(np.mean(nearest == labels))
        if guided:
            assert mass >= 0.97, (guidance_name, scale, mass)
        else:
            assert abs(mass - 1 / 8) <= 5 * se, (guidance_name, scale, mass)


def run_cli(workdir, mode, *args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env.pop("SCORE_SDE_DEBUG", None)
    cmd = [sys.executable, "main.py", "--config=configs/digits_cond.py", f"--workdir={workdir}", f"--mode={mode}",
           "--config.model.name=mlp", "--config.model.hidden=(32,32)", "--config.training.n_iters=2",
           "--config.training.snapshot_freq=2", "--config.training.log_freq=2", "--config.training.batch_size=8",
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_sample_one_row_per_class(tmp_path):
    """configs/digits_cond.py trained 2 steps; --mode=sample with class_label=-1 gives 10 rows of 2 samples
    (npz labels 0,0,1,1,..., PNG grid of 10 x 2 cells). (Bad labels: test_class_label_validation; the
    one-line `error:` path of schema problems is test_cli's; what guidance does to the samples, free and
    classifier, with the exact oracle: test_guided_sampling_follows_the_label_and_the_scale.)"""
    workdir = tmp_path / "run"
    proc = run_cli(workdir, "train")
    assert proc.returncode == 0, proc.stderr
    sample = ["--config.sampling.num_samples=20", "--config.sampling.batch_size=8", "--config.sampling.method=ode",
              "--config.sampling.ode.solver=euler", "--config.sampling.ode.n_steps=3"]
    proc = run_cli(workdir, "sample", *sample, "--config.sampling.class_label=-1", "--config.sampling.guidance_scale=1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["class_label"] == -1 and summary["guidance_scale"] == 1.0 and summary["num_samples"] == 20
    saved = np.load(summary["npz"])
    np.testing.assert_array_equal(saved["labels"], np.repeat(np.arange(10), 2))
    assert saved["samples"].shape == (20, 8, 8, 1) and np.all(np.isfinite(saved["samples"]))
    with Image.open(summary["grid"]) as img:  # cells of 8 px + 1 px border, upscaled 4x
        assert img.size == ((2 * 9 + 1) * 4, (10 * 9 + 1) * 4)
