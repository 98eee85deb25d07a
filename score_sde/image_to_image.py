"""Image-to-image tasks: the condition of a trained conditional model derived from the clean image.

A task turns clean images x0 (B, H, W, C) and per-example keys into condition parts, on device, in
the training loss (`losses.model_loss_fn(..., derive=task.derive)`) and at sampling time from the
test split. The data pipeline is unchanged: it yields plain images, and the task makes the
condition from them, with fresh randomness per example and step from the example's key.

- `SuperResolution` (SR3, Saharia et al. 2021; cascaded diffusion, Ho et al. 2021): part "low_res"
  (kind `image`) = `area_downsample(x0, factor)`, the mean of each factor x factor block (what
  `PIL.Image.resize(..., BOX)` and `cv2.INTER_AREA` give for integer factors). Conditioning
  augmentation: in training, low_res + s e with s ~ U(0, max_aug_level) and e ~ N(0, I), and the
  level s itself is the part "aug_level" (kind `noise_level`); at sampling time s is a fixed value
  (`sampling.aug_level`, default 0: the clean low-res image).
- `Inpainting` (Palette, Saharia et al. 2022): part "masked" (kind `mask`) = x0 where known, NaN
  where unknown; each example draws one mask family of `masks`: "box" (a random rectangle of side
  H/4 .. H/2 unknown), "half" (one of the four halves unknown), "uncrop" (only a central
  square of side H/2 known: the model extends it outwards).
- `JpegRestoration` (Palette): part "jpeg" (kind `image`, the data's size) = the grayscale baseline
  JPEG round trip of x0 (`score_sde.jpeg`, Pillow's codec written in JAX) at an integer quality
  drawn per example uniformly from quality_min..quality_max (Palette: 5..15) from fold_in(key, 7).
- `MultiTask` (Palette's multi-task model): each example draws one of `tasks` (mask families
  box / half / uncrop and "jpeg") uniformly from fold_in(key, 9); the condition has both parts,
  "masked" (mask) and "jpeg" (image), and the part the example's task does not use holds its null
  value (all NaN): the mask kind's known-mask channel and the image kind's present channel tell one
  network which task it is given. At sampling time pass only the task's part (the other is null).

Example keys: a task uses fold_in(key, 7) and fold_in(key, 8) (MultiTask also fold_in(key, 9)), apart from the loss's own draws
(split(key)) and the condition dropout (fold_in(key, 2)).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from score_sde import jpeg as jpeg_codec

Array = jax.Array

MASK_FAMILIES = ("box", "half", "uncrop")


def area_downsample(x: Array, factor: int) -> Array:
    """Mean over factor x factor blocks: (B, H, W, C) -> (B, H / factor, W / factor, C).

    Raises:
      ValueError: H or W is not a multiple of `factor`.
    """
    b, h, w, c = x.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"area downsampling by {factor} needs H and W divisible by it; got images {h}x{w}")
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample(x: Array, size: int, method: str = "bilinear") -> Array:
    """(B, h, w, C) -> (B, size, size, C) by `jax.image.resize` (nearest | bilinear | bicubic)."""
    if method not in ("nearest", "bilinear", "bicubic"):
        raise ValueError(f"unknown upsampling method {method!r}; valid methods: nearest, bilinear, bicubic")
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), method)


def augment(keys: Array, low_res: Array, levels: Array) -> Array:
    """low_res + level e per example, e ~ N(0, I) from fold_in(key, 8): the conditioning augmentation."""
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 8), low_res.shape[1:], low_res.dtype))(keys)
    return low_res + levels.reshape((-1,) + (1,) * (low_res.ndim - 1)).astype(low_res.dtype) * noise


@dataclasses.dataclass(frozen=True)
class SuperResolution:
    """Super-resolution by `factor` with conditioning augmentation up to `max_aug_level`.

    Parts: "low_res" (image, side H / factor) and "aug_level" (noise_level).
    """

    factor: int = 4
    max_aug_level: float = 0.0

    names = ("low_res", "aug_level")
    kinds = ("image", "noise_level")  # the condition kinds of `names` (config.data.cond.<name>.kind)

    def derive(self, keys: Array, x0: Array, level: float | None = None) -> dict:
        """{"low_res": (B, H/f, W/f, C), "aug_level": (B,)} of clean images x0 (B, H, W, C).

        Args:
          keys: per-example keys (B, 2).
          level: None (training): s ~ U(0, max_aug_level) from fold_in(key, 7); a number: that level
            for every example (sampling).
        """
        low = area_downsample(x0, self.factor)
        if level is None:
            u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 7)))(keys)
            levels = u * self.max_aug_level
        else:
            levels = jnp.full((x0.shape[0],), float(level), jnp.float32)
        return {"low_res": augment(keys, low, levels), "aug_level": levels.astype(jnp.float32)}

    def degrade(self, x0: Array) -> Array:
        """The observation without augmentation (for consistency checks): area_downsample(x0, factor)."""
        return area_downsample(x0, self.factor)

    def from_low_res(self, keys: Array, low_res: Array, level: float) -> dict:
        """{"low_res": low_res + level e, "aug_level": (B,) level} for given low-res images (B, h, w, C): the
        condition of a cascade's SR stage, its input the base model's samples (`score_sde.drivers.cascade`);
        e ~ N(0, I) from fold_in(key, 8), as in `derive`."""
        levels = jnp.full((low_res.shape[0],), float(level), jnp.float32)
        return {"low_res": augment(keys, jnp.asarray(low_res), levels), "aug_level": levels}


def _box_known(key: Array, h: int, w: int) -> Array:
    """(h, w) bool: False inside a random rectangle of sides in [h/4, h/2], True elsewhere."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    bh = jax.random.randint(k1, (), max(1, h // 4), max(1, h // 2) + 1)
    bw = jax.random.randint(k2, (), max(1, w // 4), max(1, w // 2) + 1)
    top = jax.random.randint(k3, (), 0, h - bh + 1)
    left = jax.random.randint(k4, (), 0, w - bw + 1)
    r, c = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    return ~((r >= top) & (r < top + bh) & (c >= left) & (c < left + bw))


def _half_known(key: Array, h: int, w: int) -> Array:
    """(h, w) bool: one of the four halves (bottom, top, right, left) unknown: the other known."""
    r, c = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    halves = jnp.stack([jnp.broadcast_to(k, (h, w)) for k in (r < h // 2, r >= h // 2, c < w // 2, c >= w // 2)])
    return halves[jax.random.randint(key, (), 0, 4)]


def _uncrop_known(key: Array, h: int, w: int) -> Array:
    """(h, w) bool: only the central square of side h/2 known (the model extends it)."""
    r, c = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    return (r >= h // 4) & (r < h // 4 + h // 2) & (c >= w // 4) & (c < w // 4 + w // 2)


_MASKERS = {"box": _box_known, "half": _half_known, "uncrop": _uncrop_known}


def known_masks(keys: Array, shape: tuple[int, ...], masks: tuple[str, ...]) -> Array:
    """(B, H, W, C) bool known-masks, one per key: a family of `masks` (uniformly, fold_in(key, 7)),
    then its random mask (fold_in(key, 8))."""
    h, w, c = shape

    def one(k):
        pick = jax.random.randint(jax.random.fold_in(k, 7), (), 0, len(masks))
        made = jnp.stack([_MASKERS[m](jax.random.fold_in(k, 8), h, w) for m in masks])
        return jnp.broadcast_to(made[pick][..., None], (h, w, c))

    return jax.vmap(one)(keys)


@dataclasses.dataclass(frozen=True)
class Inpainting:
    """Inpainting / uncropping through the `mask` kind: part "masked" = x0 where known, NaN elsewhere."""

    masks: tuple = ("box", "half")

    names = ("masked",)
    kinds = ("mask",)

    def __post_init__(self):
        bad = [m for m in self.masks if m not in _MASKERS]
        if bad or not self.masks:
            raise ValueError(f"unknown mask families {bad or '(none given)'}; valid: {', '.join(MASK_FAMILIES)}")

    def derive(self, keys: Array, x0: Array, level: float | None = None) -> dict:
        """{"masked": (B, H, W, C), NaN where unknown} (`level` is unused: no augmentation)."""
        known = known_masks(keys, x0.shape[1:], self.masks)
        return {"masked": jnp.where(known, x0, jnp.nan)}


def _masks(value) -> tuple:
    if isinstance(value, str):
        return tuple(m.strip() for m in value.split(",") if m.strip())
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class JpegRestoration:
    """JPEG restoration: part "jpeg" (image) = JPEG round trip of x0 at a quality drawn per example.

    `centered`: the data's scale ([-1, 1] if True, else [0, 1]) set from config.data.centered.
    """

    quality_min: int = 5
    quality_max: int = 15
    centered: bool = True

    names = ("jpeg",)
    kinds = ("image",)

    def qualities(self, keys: Array) -> Array:
        """(B,) int32 qualities, uniform on quality_min..quality_max from fold_in(key, 7)."""
        return jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 7), (), self.quality_min,
                                                     self.quality_max + 1))(keys)

    def degrade(self, x0: Array, quality: Array) -> Array:
        """The JPEG round trip of x0 (B, H, W, 1) at qualities (B,) (`score_sde.jpeg.jpeg`), model scale."""
        return jpeg_codec.jpeg(x0, quality, (-1.0, 1.0) if self.centered else (0.0, 1.0))

    def derive(self, keys: Array, x0: Array, level: float | None = None) -> dict:
        """{"jpeg": (B, H, W, 1)} (`level` is unused; the quality is drawn from the key also at sampling)."""
        return {"jpeg": self.degrade(x0, self.qualities(keys))}


MULTI_TASKS = MASK_FAMILIES + ("jpeg",)


@dataclasses.dataclass(frozen=True)
class MultiTask:
    """One model for inpainting (box, half), uncropping and JPEG restoration: parts "masked" (mask)
    and "jpeg" (image), the one the example's task does not use null (all NaN)."""

    tasks: tuple = ("box", "half", "uncrop", "jpeg")
    quality_min: int = 5
    quality_max: int = 15
    centered: bool = True

    names = ("masked", "jpeg")
    kinds = ("mask", "image")

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in MULTI_TASKS]
        if bad or not self.tasks:
            raise ValueError(f"unknown multi-task tasks {bad or '(none given)'}; valid: {', '.join(MULTI_TASKS)}")

    def derive(self, keys: Array, x0: Array, level: float | None = None) -> dict:
        """{"masked": (B, H, W, C), "jpeg": (B, H, W, C)}: per example one task of `tasks` (fold_in(key, 9));
        its mask from fold_in(key, 8), its JPEG quality from fold_in(key, 7); the unused part all NaN."""
        h, w, c = x0.shape[1:]
        pick = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 9), (), 0, len(self.tasks)))(keys)
        families = [t for t in self.tasks if t != "jpeg"]
        known = jnp.ones(x0.shape, bool)
        for i, t in enumerate(self.tasks):
            if t != "jpeg":
                m = jax.vmap(lambda k, t=t: _MASKERS[t](jax.random.fold_in(k, 8), h, w))(keys)[..., None]
                known = jnp.where((pick == i)[:, None, None, None], jnp.broadcast_to(m, x0.shape), known)
        is_jpeg = jnp.asarray([t == "jpeg" for t in self.tasks])[pick][:, None, None, None]
        out = {"masked": jnp.where(is_jpeg | ~known, jnp.nan, x0) if families else jnp.full(x0.shape, jnp.nan)}
        if "jpeg" in self.tasks:
            jp = JpegRestoration(self.quality_min, self.quality_max, self.centered)
            out["jpeg"] = jnp.where(is_jpeg, jp.degrade(x0, jp.qualities(keys)), jnp.nan)
        else:
            out["jpeg"] = jnp.full(x0.shape, jnp.nan, x0.dtype)
        return out


# config.data.task.name -> the task from config.data.task's fields (the one table; read-only)
TASKS: Mapping[str, Any] = types.MappingProxyType({
    "super_resolution": lambda c: SuperResolution(factor=int(c.get("factor", 4)),
                                                  max_aug_level=float(c.get("max_aug_level", 0.0))),
    "inpainting": lambda c: Inpainting(masks=_masks(c.get("masks", "box,half"))),
    "jpeg": lambda c: JpegRestoration(quality_min=int(c.get("quality_min", 5)), quality_max=int(c.get("quality_max", 15))),
    "multi": lambda c: MultiTask(tasks=_masks(c.get("tasks", "box,half,uncrop,jpeg")),
                                 quality_min=int(c.get("quality_min", 5)), quality_max=int(c.get("quality_max", 15))),
})


def task_from_config(fields: Mapping[str, Any] | None):
    """config.data.task ({"name": ..., fields}) -> the task, or None for name "" (no task).

    Raises:
      ValueError: an unknown task name (the message lists the valid ones) or a bad field.
    """
    name = str((fields or {}).get("name", "") or "")
    if not name:
        return None
    if name not in TASKS:
        raise ValueError(f"unknown image-to-image task {name!r}; valid tasks: {', '.join(TASKS)} (or '' for none)")
    task = TASKS[name](fields)
    if isinstance(task, SuperResolution) and (task.factor < 2 or task.max_aug_level < 0):
        raise ValueError(f"data.task: super_resolution needs factor >= 2 and max_aug_level >= 0, got factor "
                         f"{task.factor}, max_aug_level {task.max_aug_level}")
    if isinstance(task, (JpegRestoration, MultiTask)) and not 1 <= task.quality_min <= task.quality_max <= 100:
        raise ValueError(f"data.task: {name} needs 1 <= quality_min <= quality_max <= 100 (JPEG qualities), got "
                         f"quality_min {task.quality_min}, quality_max {task.quality_max}")
    return task


def psnr(x: Array, ref: Array, data_range: float = 2.0) -> Array:
    """(B,) peak signal-to-noise ratio in dB of x against ref (data spanning `data_range`)."""
    mse = jnp.mean((x - ref).reshape(x.shape[0], -1) ** 2, axis=1)
    return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-12))


def ssim(x: Array, ref: Array, data_range: float = 2.0, window: int = 7) -> Array:
    """(B,) mean structural similarity (Wang et al. 2004) with a uniform window (skimage's default
    7 x 7, sample covariances), images (B, H, W, C) with H, W >= window; averaged over channels."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    kernel = jnp.ones((window, window, 1, 1), x.dtype) / window ** 2

    def filt(a):
        b, h, w, c = a.shape
        a = a.transpose(0, 3, 1, 2).reshape(b * c, h, w, 1)
        out = jax.lax.conv_general_dilated(a, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out.reshape(b, c, *out.shape[1:3]).transpose(0, 2, 3, 1)

    n = window ** 2
    mx, my = filt(x), filt(ref)
    cov = n / (n - 1)
    vx, vy = cov * (filt(x * x) - mx * mx), cov * (filt(ref * ref) - my * my)
    vxy = cov * (filt(x * ref) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.reshape(s.shape[0], -1).mean(axis=1)


__all__ = ["area_downsample", "upsample", "augment", "SuperResolution", "Inpainting", "known_masks", "TASKS",
           "MASK_FAMILIES", "task_from_config", "psnr", "ssim", "JpegRestoration", "MultiTask", "MULTI_TASKS"]
