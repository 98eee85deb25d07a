"""Conditions: named parts, each of a kind that decides how it enters the network and its null value.

A condition is a dict of named parts, e.g. {"label": (B,) ints, "y": (B, 1) floats,
"low_res": (B, h, w, c)}, or None (every part null). A model's `cond_spec` is a tuple of `Part`s
(name, kind, dropout); the kind is an object that carries everything about the condition:

    kind.null(batch, data_shape)           the null value (for classifier-free guidance and dropout)
    kind.is_null(value)                    (B,) bool: which examples hold the null value
    kind.embedding(name, value, dim)       (B, dim) added to the noise embedding, or None
    kind.channels(name, value, x)          (B, *spatial, c) concatenated to the input, or None

`embedding` and `channels` are the kind's network branch: they run inside the network's
`nn.compact` call, so their parameters live in the network's tree (`conditioning` below is the one
place every network calls). The kinds:

=============  =========================  ==================================  ===================
kind           value                      enters the network as               null value
=============  =========================  ==================================  ===================
label          (B,) ints in [0, K)        learned embedding (K + 1 rows)      index K
vector         (B, size) floats           MLP embedding + noise embedding     NaN (B, size)
image          (B, h, w, c) floats        resized to x's H x W, concatenated  NaN (B, h, w, c)
                                          as c channels + a "present" one
mask           (B, *x.shape[1:]) floats,  the known values (0 elsewhere) and  all NaN (nothing
               NaN where unknown          the known-mask, as input channels   known)
noise_level    (B,) floats                Fourier embedding + noise emb.      NaN (B,)
=============  =========================  ==================================  ===================

A new kind is one class here (its null value and its branch) and one row of `KINDS` (the name the
config uses); no network, loss or sampler changes (the worked example: tests/test_cond_model.py).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.lookup import lookup
from score_sde.models.embeddings import fourier_embedding

Array = jax.Array


def _present(value: Array) -> Array:
    """(B,) True where an example's value has no NaN (NaN marks the null value)."""
    return ~jnp.any(jnp.isnan(value.reshape(value.shape[0], -1)), axis=1)


def _clean(value: Array) -> Array:
    """NaN -> 0, so null values never reach a gradient (0 * NaN would poison it)."""
    return jnp.where(jnp.isnan(value), 0.0, value)


_resize = jax.jit(lambda img, shape: jax.image.resize(img, shape, "bilinear"), static_argnums=1)  # one fused op


class Kind:
    """Base of the condition kinds: frozen dataclasses (hashable, so networks can hold them).

    Subclasses define `null` and one or both of `embedding` / `channels`.
    """

    def null(self, batch: int, data_shape: tuple[int, ...]) -> Array:
        """The null value for `batch` examples of data shaped data_shape (one example)."""
        raise NotImplementedError

    def is_null(self, value: Array) -> Array:
        """(B,) bool: True where the example holds the null value."""
        return ~_present(jnp.asarray(value))

    def embedding(self, name: str, value: Array, dim: int) -> Array | None:
        """(B, dim) added to the noise embedding (inside the network's nn.compact), or None."""
        return None

    def channels(self, name: str, value: Array, x: Array) -> Array | None:
        """(B, *x.shape[1:-1], c) concatenated to the network input, or None."""
        return None

    def check_values(self, name: str, value, data_range: tuple[float, float]) -> None:
        """Raises a one-line ValueError when concrete values (N, ...) cannot be this kind's (host side,
        before any work; traced values are not checked). Kinds in the data's scale check its range."""


def _check_in_range(name: str, kind: str, value, data_range: tuple[float, float], null_examples: bool) -> None:
    """A one-line ValueError naming the part, the first bad example and the valid range when a value of
    an image-scale part is outside `data_range` (1e-6 slack) or +-Inf, or NaN where NaN has no meaning.

    null_examples: NaN marks a whole null example (image: all NaN or none); else NaN marks unknown values
    (mask) and is valid anywhere."""
    lo, hi = (float(v) for v in data_range)
    v = np.asarray(value, np.float64).reshape(len(value), -1)
    nan = np.isnan(v)
    bad = (np.isinf(v) | (~nan & ((v < lo - 1e-6) | (v > hi + 1e-6)))).any(axis=1)
    if null_examples:
        bad |= nan.any(axis=1) & ~nan.all(axis=1)
    if not bad.any():
        return
    i = int(np.argmax(bad))
    row = v[i][~nan[i]] if null_examples and not nan[i].all() else v[i]
    finite = row[np.isfinite(row)]
    what = []
    if np.isnan(v[i]).any():
        what.append("NaN" if not null_examples else "NaN in part of the image")
    if np.isinf(v[i]).any():
        what.append("Inf")
    if finite.size and (finite.min() < lo - 1e-6 or finite.max() > hi + 1e-6):
        what.append(f"values from {finite.min():.4g} to {finite.max():.4g}")
    null = "or NaN for an unknown value" if not null_examples else "or an all-NaN example (the null condition)"
    raise ValueError(f"condition part {name!r} ({kind}) holds {' and '.join(what)} in example {i} "
                     f"({int(bad.sum())} of {len(v)} examples are bad); valid: finite values in the data range "
                     f"[{lo:g}, {hi:g}], {null}")


@dataclasses.dataclass(frozen=True)
class Label(Kind):
    """Integer class labels (B,) in [0, num_classes); the null value is the index num_classes."""

    num_classes: int

    def null(self, batch, data_shape):
        return jnp.full((batch,), self.num_classes, jnp.int32)

    def is_null(self, value):
        return jnp.asarray(value) == self.num_classes

    def embedding(self, name, value, dim):
        value = jnp.asarray(value, jnp.int32)
        if value.ndim != 1:
            raise ValueError(f"condition {name!r} (label) must be (B,) integer labels, got shape {value.shape}")
        # "class_embedding": the name (and tree) every class-conditional checkpoint already has
        return nn.Embed(self.num_classes + 1, dim, name="class_embedding" if name == "label" else f"{name}_embedding")(
            value)


@dataclasses.dataclass(frozen=True)
class Vector(Kind):
    """Continuous vectors (B, size), embedded by a 2-layer MLP and added to the noise embedding."""

    size: int

    def null(self, batch, data_shape):
        return jnp.full((batch, self.size), jnp.nan, jnp.float32)

    def embedding(self, name, value, dim):
        value = jnp.asarray(value, jnp.float32)
        if value.ndim != 2 or value.shape[1] != self.size:
            raise ValueError(f"condition {name!r} (vector) must have shape (B, {self.size}), got {value.shape}")
        h = nn.silu(nn.Dense(dim, name=f"{name}_embed_0")(_clean(value)))
        h = nn.Dense(dim, name=f"{name}_embed_1")(h)
        return jnp.where(_present(value)[:, None], h, 0.0)


@dataclasses.dataclass(frozen=True)
class NoiseLevel(Kind):
    """A scalar (B,) per example (a cascade's conditioning-augmentation level), Fourier-embedded."""

    def null(self, batch, data_shape):
        return jnp.full((batch,), jnp.nan, jnp.float32)

    def embedding(self, name, value, dim):
        value = jnp.asarray(value, jnp.float32)
        if value.ndim != 1:
            raise ValueError(f"condition {name!r} (noise_level) must have shape (B,), got {value.shape}")
        h = nn.Dense(dim, name=f"{name}_embed")(fourier_embedding(_clean(value), max(2, 2 * (dim // 4))))
        return jnp.where(_present(value)[:, None], h, 0.0)


@dataclasses.dataclass(frozen=True)
class Image(Kind):
    """An image (B, h, w, channels) resized (bilinear) to the data's H x W and concatenated as
    input channels, with one more channel that is 1 where the image is present (not null)."""

    channels_: int = 1
    size: int = 0  # its side length; 0: the data's

    def null(self, batch, data_shape):
        side = self.size or data_shape[0]
        return jnp.full((batch, side, side, self.channels_), jnp.nan, jnp.float32)

    def channels(self, name, value, x):
        value = jnp.asarray(value, jnp.float32)
        if value.ndim != 4 or value.shape[-1] != self.channels_ or x.ndim != 4:
            raise ValueError(f"condition {name!r} (image) must have shape (B, h, w, {self.channels_}) for image "
                             f"data (B, H, W, C), got {value.shape} for data {x.shape}")
        img = _resize(_clean(value), (*x.shape[:3], self.channels_))
        present = jnp.broadcast_to(_present(value)[:, None, None, None], (*x.shape[:3], 1)).astype(img.dtype)
        return jnp.concatenate([img, present], -1)

    def check_values(self, name, value, data_range):
        _check_in_range(name, "image", value, data_range, null_examples=True)


@dataclasses.dataclass(frozen=True)
class Mask(Kind):
    """Known values of the data (B, *data_shape), NaN where unknown: the input gets the known values
    (0 elsewhere) and the known-mask as 2 C channels; the null value knows nothing (all NaN)."""

    def null(self, batch, data_shape):
        return jnp.full((batch, *data_shape), jnp.nan, jnp.float32)

    def is_null(self, value):
        value = jnp.asarray(value)
        return jnp.all(jnp.isnan(value.reshape(value.shape[0], -1)), axis=1)

    def channels(self, name, value, x):
        value = jnp.asarray(value, jnp.float32)
        if value.shape[1:] != x.shape[1:]:
            raise ValueError(f"condition {name!r} (mask) must have the data's shape {x.shape}, got {value.shape}")
        known = ~jnp.isnan(value)
        return jnp.concatenate([_clean(value), known.astype(jnp.float32)], -1)

    def check_values(self, name, value, data_range):
        _check_in_range(name, "mask", value, data_range, null_examples=False)


# config name -> the kind's constructor from its config fields (the one table; read-only)
KINDS: Mapping[str, Any] = types.MappingProxyType({
    "label": lambda c: Label(num_classes=int(c["num_classes"])),
    "vector": lambda c: Vector(size=int(c["size"])),
    "image": lambda c: Image(channels_=int(c.get("channels", 1)), size=int(c.get("size", 0))),
    "mask": lambda c: Mask(),
    "noise_level": lambda c: NoiseLevel(),
})


class Part(NamedTuple):
    """One named part of a condition: its kind and its training dropout rate (share of examples
    trained with the null value, for classifier-free guidance)."""

    name: str
    kind: Kind
    dropout: float = 0.0


CondSpec = tuple  # tuple[Part, ...]


def kind_from_config(fields: Mapping[str, Any]) -> Kind:
    """{"kind": name, ...its fields} -> the Kind (unknown names list the valid ones)."""
    return lookup(KINDS, str(fields["kind"]), "condition kind", "kinds")(fields)


def check_values(kinds: Mapping[str, Kind], values: Mapping[str, Any], data_range: tuple[float, float]) -> None:
    """Checks concrete condition values {part: (N, ...)} against their kinds ({part: Kind}; parts
    missing from either are skipped): a one-line ValueError naming the first bad part (`Kind.check_values`)."""
    for name, value in values.items():
        if name in kinds and value is not None:
            kinds[name].check_values(name, value, data_range)


def label_spec(num_classes: int, dropout: float = 0.0) -> CondSpec:
    """The spec of a class-conditional model: one `label` part named "label" (or () for 0 classes)."""
    return (Part("label", Label(int(num_classes)), float(dropout)),) if num_classes else ()


def as_cond(spec: CondSpec, cond) -> dict | None:
    """cond as a dict of parts: a bare array is the value of a one-part spec (e.g. labels y (B,))."""
    if cond is None or isinstance(cond, Mapping):
        if cond:
            unknown = sorted(set(cond) - {p.name for p in spec})
            if unknown:
                raise ValueError(f"condition part(s) {unknown} are not in this model's spec; valid parts: "
                                 f"{[p.name for p in spec] or 'none (unconditional model)'}")
        return None if cond is None else dict(cond)
    if len(spec) != 1:
        raise ValueError(f"a bare array condition needs a one-part spec; this model's parts are "
                         f"{[p.name for p in spec]}: pass a dict {{name: value}}")
    return {spec[0].name: cond}


def fill_nulls(spec: CondSpec, cond, batch: int, data_shape: tuple[int, ...]) -> dict:
    """Every part of `spec` with its value in `cond` (a dict or None), null where missing."""
    cond = as_cond(spec, cond) or {}
    return {p.name: cond[p.name] if cond.get(p.name) is not None else p.kind.null(batch, data_shape) for p in spec}


def conditioning(spec: CondSpec, cond, x: Array, dim: int) -> tuple[Array | None, Array]:
    """The network branches of every part (call inside a network's nn.compact).

    Args:
      spec: the network's parts.
      cond: dict of part values (missing parts / None: null).
      x: the network input (B, *dims).
      dim: the width of the noise embedding.

    Returns:
      (sum of the parts' embeddings (B, dim) or None, x with the parts' channels concatenated).
    """
    if not spec:
        if cond:
            raise ValueError(f"this network has no condition parts and no class embedding (num_classes=0) but was "
                             f"given a condition {sorted(cond)}; set config.data.num_classes > 0 (labels) or "
                             f"config.data.cond (any kind) to train a conditional model")
        return None, x
    values = fill_nulls(spec, cond, x.shape[0], x.shape[1:])
    emb, extra = None, []
    for part in spec:
        e = part.kind.embedding(part.name, values[part.name], dim)
        if e is not None:
            emb = e if emb is None else emb + e
        c = part.kind.channels(part.name, values[part.name], x)
        if c is not None:
            extra.append(c.astype(x.dtype))
    return emb, jnp.concatenate([x, *extra], -1) if extra else x


def network_spec(cond_spec: CondSpec, num_classes: int) -> CondSpec:
    """A network's parts: its `cond_spec`, or the one label part of the legacy `num_classes`."""
    return tuple(cond_spec) or label_spec(num_classes)


def merge_label(cond, y):
    """The legacy `y=` labels argument as the "label" part of cond."""
    if y is None:
        return cond
    return {**(cond or {}), "label": y}


def drop_parts(keys: Array, spec: CondSpec, cond, batch: int, data_shape: tuple[int, ...],
               train: bool = True) -> dict:
    """The condition with each part replaced by its null value with probability `part.dropout`.

    Part i of example b decides from fold_in(keys[b], 2) (i = 0, the labels' historic stream) or
    fold_in(fold_in(keys[b], 2), i): independent of the example's time and noise.
    """
    values = fill_nulls(spec, cond, batch, data_shape)
    for i, part in enumerate(spec):
        if not train or part.dropout <= 0:
            continue

        def decide(k, i=i, rate=part.dropout):
            k = jax.random.fold_in(k, 2)
            return jax.random.bernoulli(k if i == 0 else jax.random.fold_in(k, i), rate)

        drop = jax.vmap(decide)(keys)
        value, null = jnp.asarray(values[part.name]), part.kind.null(batch, data_shape)
        values[part.name] = jnp.where(drop.reshape((-1,) + (1,) * (value.ndim - 1)), null.astype(value.dtype), value)
    return values


def spec_summary(spec: CondSpec) -> str:
    """'label:label, y:vector' (for messages)."""
    return ", ".join(f"{p.name}:{type(p.kind).__name__.lower()}" for p in spec) or "none"


__all__ = ["Kind", "Label", "Vector", "NoiseLevel", "Image", "Mask", "KINDS", "Part", "CondSpec", "kind_from_config", "check_values",
           "label_spec", "as_cond", "fill_nulls", "conditioning", "network_spec", "merge_label", "drop_parts",
           "spec_summary"]
