"""Weight-free sample quality for MNIST: a small CNN classifier trained here, and figures in its feature space.

No Inception weights are needed. A LeNet-style CNN is trained on the MNIST training split (two
epochs, about 99 % test accuracy) and cached in the workdir as `.npz`. For a set of samples it gives

  * the Frechet distance of its 128-d penultimate features to those of the training split, with the
    floor: the same distance between two random halves of the test split (what real data reaches);
  * the mean confidence (max softmax probability), with the test split's as reference;
  * for conditional samples, the label agreement: the share classified as the label they were drawn for.

Images are (N, 28, 28[, 1]) in [0, 1].
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from score_sde import quality

FEATURE_DIM = 128


class MnistCNN(nn.Module):
    """x (B, 28, 28, 1) in [0, 1] -> (features (B, 128), logits (B, 10))."""

    @nn.compact
    def __call__(self, x):
        h = x - 0.5
        for ch in (32, 64):
            h = nn.relu(nn.Conv(ch, (3, 3))(h))
            h = nn.relu(nn.Conv(ch, (3, 3))(h))
            h = nn.max_pool(h, (2, 2), (2, 2))          # 28 -> 14 -> 7
        features = nn.relu(nn.Dense(FEATURE_DIM)(h.reshape(h.shape[0], -1)))
        return features, nn.Dense(10)(features)


class MnistClassifier:
    """The trained CNN's parameters, with batched numpy-in / numpy-out features and probabilities."""

    def __init__(self, params: Any, batch_size: int = 500):
        self.params = params
        self.batch_size = batch_size
        self._apply = jax.jit(lambda p, x: MnistCNN().apply({"params": p}, x))

    def _run(self, x01: np.ndarray, which: int) -> np.ndarray:
        x = np.asarray(x01, np.float32).reshape(-1, 28, 28, 1)
        outs = [np.asarray(self._apply(self.params, x[i:i + self.batch_size])[which])
                for i in range(0, len(x), self.batch_size)]
        return np.concatenate(outs).astype(np.float64)

    def features(self, x01: np.ndarray) -> np.ndarray:
        """(N, 28, 28[, 1]) in [0, 1] -> penultimate features (N, 128)."""
        return self._run(x01, 0)

    def probs(self, x01: np.ndarray) -> np.ndarray:
        """(N, 28, 28[, 1]) in [0, 1] -> class probabilities (N, 10)."""
        logits = self._run(x01, 1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def accuracy(self, x01: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.probs(x01).argmax(axis=1) == np.asarray(labels)))


def train_classifier(x01: np.ndarray, labels: np.ndarray, epochs: int = 2, batch_size: int = 128,
                     seed: int = 0, lr: float = 1e-3) -> MnistClassifier:
    """Adam on cross-entropy, reshuffled each epoch from `seed` (about a minute an epoch on 2 CPU cores)."""
    x = np.asarray(x01, np.float32).reshape(-1, 28, 28, 1)
    y = np.asarray(labels, np.int32)
    net, opt = MnistCNN(), optax.adam(lr)
    params = net.init(jax.random.PRNGKey(seed), x[:1])["params"]
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": p}, xb)[1], yb).mean()
        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            params, opt_state = step(params, opt_state, x[idx], y[idx])
    return MnistClassifier(params)


def load_or_train_classifier(cache_path: str, x01: np.ndarray, labels: np.ndarray) -> MnistClassifier:
    """Loads the cached classifier from `cache_path` (.npz), training and saving it (atomically) if absent."""
    if os.path.exists(cache_path):
        with np.load(cache_path) as f:
            flat = {tuple(k.split("/")): jnp.asarray(f[k]) for k in f.files}
        return MnistClassifier(traverse_util.unflatten_dict(flat))
    clf = train_classifier(x01, labels)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(clf.params).items()}
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    tmp = cache_path + ".tmp.npz"
    np.savez(tmp, **flat)
    os.replace(tmp, cache_path)
    return clf


def mnist_quality(clf: MnistClassifier, samples01: np.ndarray, train01: np.ndarray, test01: np.ndarray,
                  sample_labels: np.ndarray | None = None) -> dict:
    """Quality report of samples (N, 28, 28[, 1]) in [0, 1] against the MNIST splits.

    Returns a dict: `frechet_distance` (samples vs the training split in the CNN's features),
    `frechet_distance_floor` (two seeded random halves of the test split), `confidence` and
    `confidence_test_split`, and with `sample_labels` the `label_agreement`.
    """
    ref = quality.gaussian_stats(clf.features(train01))
    # A seeded random halving: MNIST's official test halves come from different writer pools
    # (first 5,000 easier than the last), which would inflate the floor.
    order = np.random.default_rng(0).permutation(len(test01))
    half = len(test01) // 2
    p = clf.probs(np.clip(samples01, 0.0, 1.0))
    out = {
        "frechet_distance": quality.frechet_distance(
            *quality.gaussian_stats(clf.features(np.clip(samples01, 0.0, 1.0))), *ref),
        "frechet_distance_floor": quality.frechet_distance(
            *quality.gaussian_stats(clf.features(test01[order[:half]])),
            *quality.gaussian_stats(clf.features(test01[order[half:2 * half]]))),
        "confidence": float(p.max(axis=1).mean()),
        "confidence_test_split": float(clf.probs(test01).max(axis=1).mean()),
        "num_samples": int(len(samples01)),
    }
    if sample_labels is not None:
        out["label_agreement"] = float(np.mean(p.argmax(axis=1) == np.asarray(sample_labels)))
    return out
