"""Palette tasks: the JAX grayscale JPEG against Pillow's codec, the JPEG-restoration and multi-task
conditions (score_sde.image_to_image), --mode=sample's conditions of the JPEG and multi-task configs, and the
noisy-observation super-resolution posterior against the Kalman update.
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import score_sde as ss
from configs import digits_jpeg, digits_palette
from score_sde import analytic, config_utils, data, image_to_image as i2i, jpeg, losses
from score_sde.drivers import evaluate

SDE = ss.VPSDE()


def _pillow(levels: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """(decoded levels, its luminance table) of Pillow's grayscale JPEG of one uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(levels.astype(np.uint8), "L").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    im = Image.open(buf)
    return np.asarray(im, np.float32), np.asarray(im.quantization[0]).reshape(8, 8)


def _test_images():
    """Digits (64, 8 x 8, 17 grey levels), uniform noise (16, 16 x 16) and noisy stripes (16, 28 x 28: a side
    that is not a multiple of 8, padded by edge replication)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:28, :28]
    stripes = 128 + 80 * np.sin(xx / rng.uniform(2, 6, (16, 1, 1)) + yy / rng.uniform(2, 6, (16, 1, 1)))
    return {"digits": np.round(load_digits().images[:64] / 16 * 255),
            "noise": rng.integers(0, 256, (16, 16, 16)).astype(np.float64),
            "stripes28": np.clip(stripes + rng.normal(0, 8, (16, 28, 28)), 0, 255).round()}


def test_quant_tables_are_pillows():
    """quant_table(q) = the luminance table Pillow writes (libjpeg's quality scaling, baseline clip) at every
    quality 1..100."""
    qs = np.arange(1, 101)
    ours = np.asarray(jax.jit(jpeg.quant_table)(jnp.asarray(qs)))
    for q, table in zip(qs, ours):
        np.testing.assert_array_equal(table, _pillow(np.zeros((8, 8)), int(q))[1], err_msg=f"quality {q}")


def test_jpeg_matches_pillow():
    """Our round trip against Pillow's encoder + decoder at qualities 5, 10, 15.

    Tolerance: Pillow (libjpeg-turbo, JDCT_ISLOW) computes both DCTs in scaled integer arithmetic, so
    (a) decoded pixels differ from the exact-float decoder by one level where the IDCT output is near
    a half-integer, and (b) a coefficient within the integer DCT's error of a rounding boundary can
    round the other way, moving its whole block by up to Q / 8 levels. Measured on these images:
    0.953-1.000 of the 8 x 8 blocks agree within one level everywhere (the rest: (b)), 0.938-0.987 of
    the pixels are equal. The bars: >= 0.93 of blocks within one level and >= 0.90 of pixels equal in
    every case; a transposed DCT or a wrong quality scaling misses them by far.
    """
    codec = jax.jit(jpeg.jpeg_levels)
    for name, imgs in _test_images().items():
        for q in (5, 10, 15):
            ours = np.asarray(codec(jnp.asarray(imgs), jnp.full((len(imgs),), q)))
            ref = np.stack([_pillow(u, q)[0] for u in imgs])
            diff = np.abs(ours - ref)
            side = -(-imgs.shape[1] // 8) * 8
            padded = np.pad(diff, ((0, 0), (0, side - imgs.shape[1]), (0, side - imgs.shape[2])))
            blocks = padded.reshape(len(imgs), side // 8, 8, side // 8, 8).max(axis=(2, 4))
            assert np.mean(blocks <= 1) >= 0.93, (name, q, np.mean(blocks <= 1))
            assert np.mean(diff == 0) >= 0.90, (name, q, np.mean(diff == 0))


def test_jpeg_model_scale_and_errors():
    """jpeg() maps [-1, 1] (or [0, 1]) to uint8 levels and back: its output lies on the 256-level grid,
    equals jpeg_levels of the rounded levels; colour input is refused in one line."""
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    codec = jax.jit(jpeg.jpeg, static_argnums=2)
    out = np.asarray(codec(x, 10, (-1.0, 1.0)))
    levels = (out + 1) / 2 * 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    ref = jax.jit(jpeg.jpeg_levels)(jnp.round((x[..., 0] + 1) / 2 * 255), jnp.full((4,), 10))
    np.testing.assert_allclose(levels[..., 0], np.asarray(ref), atol=1e-3)
    np.testing.assert_allclose(np.asarray(codec((x + 1) / 2, 10, (0.0, 1.0))), (out + 1) / 2, atol=1e-6)
    with pytest.raises(ValueError, match=r"grayscale images \(B, H, W, 1\); got shape \(2, 8, 8, 3\)"):
        jpeg.jpeg(jnp.zeros((2, 8, 8, 3)), 10)


def _keys(n, seed=0):
    return losses.example_keys(jax.random.PRNGKey(seed), n)


def test_jpeg_task_draws_qualities_5_to_15():
    """digits_jpeg's task: part "jpeg" (image, the data's size) = jpeg(x0, q) with q uniform on 5..15 from
    fold_in(key, 7), the same at training and sampling."""
    c = digits_jpeg.get_config()
    task = config_utils.task_from_config(c)
    spec = config_utils.cond_spec_from_config(c)
    assert [(p.name, type(p.kind).__name__, p.kind.size) for p in spec] == [("jpeg", "Image", 8)]
    keys = _keys(2200)
    q = np.asarray(jax.jit(task.qualities)(keys))
    counts = np.bincount(q, minlength=16)
    assert counts[:5].sum() == 0 and np.all(np.abs(counts[5:] - 200) < 5 * np.sqrt(200))
    x0 = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (12, 8, 8, 1)), jnp.float32)
    got = jax.jit(task.derive)(keys[:12], x0)["jpeg"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(jpeg.jpeg)(x0, q[:12])), atol=1e-6)
    c.data.task.quality_min = 0
    with pytest.raises(ValueError, match="1 <= quality_min <= quality_max <= 100"):
        config_utils.task_from_config(c)


def test_multi_task_condition():
    """digits_palette: parts masked (mask) and jpeg (image); per example exactly one is present; each
    task ~1/4 of the examples; the masked part is the Inpainting family's mask (fold_in(key, 8)) with the
    image's known pixels, the jpeg part the JpegRestoration output (fold_in(key, 7))."""
    c = digits_palette.get_config()
    task = config_utils.task_from_config(c)
    assert isinstance(task, i2i.MultiTask) and task.tasks == ("box", "half", "uncrop", "jpeg")
    spec = config_utils.cond_spec_from_config(c)
    assert [(p.name, type(p.kind).__name__) for p in spec] == [("jpeg", "Image"), ("masked", "Mask")]
    n = 400
    keys = _keys(n, 1)
    x0 = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (n, 8, 8, 1)), jnp.float32)
    out = {k: np.asarray(v) for k, v in jax.jit(task.derive)(keys, x0).items()}
    assert out["masked"].shape == out["jpeg"].shape == (n, 8, 8, 1)
    has_jpeg = ~np.isnan(out["jpeg"]).any(axis=(1, 2, 3))
    has_mask = ~np.isnan(out["masked"]).all(axis=(1, 2, 3))
    assert np.all(has_jpeg != has_mask)
    assert np.all(np.isnan(out["jpeg"][~has_jpeg]))
    @jax.jit
    def expected(keys, x0):  # the task pick, the JPEG task's and each mask family's parts, in one program
        pick = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 9), (), 0, 4))(keys)
        fams = [i2i.Inpainting(masks=(f,)).derive(keys, x0)["masked"] for f in ("box", "half", "uncrop")]
        return pick, i2i.JpegRestoration().derive(keys, x0)["jpeg"], fams

    pick, jp, fams = jax.tree.map(np.asarray, expected(keys, x0))
    np.testing.assert_array_equal(has_jpeg, pick == 3)
    assert np.all(np.abs(np.bincount(pick, minlength=4) - n / 4) < 5 * np.sqrt(n * 3 / 16))
    np.testing.assert_allclose(out["jpeg"][has_jpeg], jp[has_jpeg], atol=1e-6)
    for i, want in enumerate(fams):
        rows = pick == i
        np.testing.assert_array_equal(np.isnan(out["masked"][rows]), np.isnan(want[rows]))
        np.testing.assert_array_equal(np.nan_to_num(out["masked"][rows]), np.nan_to_num(want[rows]))
    with pytest.raises(ValueError, match="unknown multi-task tasks \\['deblur'\\]; valid: box, half, uncrop, jpeg"):
        i2i.MultiTask(tasks=("box", "deblur"))


def test_jpeg_and_multi_task_sampling_conditions():
    """--mode=sample's conditions of digits_jpeg: cond jpeg = the JPEG of the test images at the qualities
    of fold_in(PRNGKey(seed + 3), row), target = the test images; the grid shows the JPEG image, and for
    digits_palette whichever of masked / jpeg each example has."""
    c = digits_jpeg.get_config()
    c.sampling.update(num_samples=6, batch_size=6)
    conds, target = evaluate.sample_conditions(c, with_target=True)
    assert sorted(conds) == ["jpeg"]
    test = next(data.iterate_once(c, "test", batch_size=6, dequantize=False))
    np.testing.assert_array_equal(target, test)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(c.seed + 3), i))(jnp.arange(6))
    q = np.asarray(jax.jit(i2i.JpegRestoration().qualities)(keys))
    np.testing.assert_allclose(conds["jpeg"], np.asarray(jax.jit(jpeg.jpeg)(jnp.asarray(test), q)), atol=1e-6)
    grid = evaluate.task_grid(conds, target + 0.5, target)
    np.testing.assert_array_equal(grid[0::3], conds["jpeg"])
    m = digits_palette.get_config()
    m.sampling.update(num_samples=6, batch_size=6)
    conds, target = evaluate.sample_conditions(m, with_target=True)
    assert sorted(conds) == ["jpeg", "masked"]
    shown = evaluate.task_grid(conds, target, target)[0::3]
    np.testing.assert_array_equal(shown, np.where(np.isnan(conds["jpeg"]), np.nan_to_num(conds["masked"]),
                                                  conds["jpeg"]))


def test_noisy_pool_posterior_is_the_kalman_update(x64):
    """One Gaussian component N(mu, s^2 I) observed as y = A x + r n (A the 2x2 pool): pool_conditional's
    mean and covariance are the Kalman update mu + K (y - A mu), (I - K A) s^2 I with
    K = s^2 A^T (s^2 A A^T + r^2 I)^-1 (1e-10); as r -> 0 it tends to the noiseless posterior."""
    rng = np.random.default_rng(6)
    mu, s, r = rng.normal(size=(1, 4, 4, 1)), 0.7, 0.3
    gmm = analytic.GaussianMixture(jnp.ones((1,)), jnp.asarray(mu), jnp.array([s]))
    A = analytic.pool_matrix((4, 4, 1), 2)
    y = rng.normal(size=4)
    post = analytic.pool_conditional(gmm, y.reshape(2, 2, 1), 2, r)
    K = s**2 * A.T @ np.linalg.inv(s**2 * A @ A.T + r**2 * np.eye(4))
    np.testing.assert_allclose(np.asarray(post.mean()).reshape(-1), mu.reshape(-1) + K @ (y - A @ mu.reshape(-1)),
                               atol=1e-10)
    np.testing.assert_allclose(np.asarray(post.cov()), (np.eye(16) - K @ A) * s**2, atol=1e-10)
    near = analytic.pool_conditional(gmm, y.reshape(2, 2, 1), 2, 1e-6)
    exact = analytic.pool_conditional(gmm, y.reshape(2, 2, 1), 2)
    np.testing.assert_allclose(np.asarray(near.cov()), np.asarray(exact.cov()), atol=1e-9)
    np.testing.assert_allclose(np.asarray(near.mean()), np.asarray(exact.mean()), atol=1e-9)
