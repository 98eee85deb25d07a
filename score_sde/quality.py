"""Weight-free sample quality for the embedded digits data (no downloads).

A small MLP classifier is trained on the digits training split in a second or two
(cached in the workdir as .npz). For a set of samples we report, in the space of its
hidden features:

  * the Frechet distance to the training split (as FID does with Inception features),
    with the test split's own distance as the reference a perfect model would reach;
  * the classifier's mean confidence (max softmax probability) and the entropy of its
    predicted-class histogram (log 10 = perfectly balanced), again with the test split's
    values as reference.

Standard FID / KID / Inception Score with pytorch-fid's Inception network and a local weights
file live in `score_sde.metrics`; `fid_with_features` here takes any `feature_fn(images) -> (N, F)`.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import numpy as np

FEATURE_DIM = 64


class DigitsClassifier(NamedTuple):
    """A one-hidden-layer MLP: features = relu(x W1 + b1), logits = features W2 + b2.

    Inputs are 8x8 images flattened, scaled to [0, 1].
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    def features(self, x01: np.ndarray) -> np.ndarray:
        x = np.asarray(x01, np.float64).reshape(len(x01), -1)
        return np.maximum(x @ self.w1 + self.b1, 0.0)

    def probs(self, x01: np.ndarray) -> np.ndarray:
        logits = self.features(x01) @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def train_classifier(x01: np.ndarray, labels: np.ndarray, seed: int = 0) -> DigitsClassifier:
    """Fits the classifier with scikit-learn (about a second on 1500 digits)."""
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(FEATURE_DIM,), max_iter=600, random_state=seed, alpha=1e-3)
    clf.fit(np.asarray(x01).reshape(len(x01), -1), labels)
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    return DigitsClassifier(w1, b1, w2, b2)


def load_or_train_classifier(cache_path: str, x01: np.ndarray, labels: np.ndarray) -> DigitsClassifier:
    """Loads the cached classifier from `cache_path` (.npz), training and saving it if absent."""
    if os.path.exists(cache_path):
        with np.load(cache_path) as f:
            return DigitsClassifier(*(f[k] for k in DigitsClassifier._fields))
    clf = train_classifier(x01, labels)
    os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
    tmp = cache_path + ".tmp.npz"
    np.savez(tmp, **clf._asdict())
    os.replace(tmp, cache_path)  # atomic: a reader never sees a half-written cache
    return clf


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F)."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), the Frechet distance of two Gaussians.

    tr (C1 C2)^(1/2) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix C1^(1/2) C2 C1^(1/2), which is stable for singular covariances
    (dead ReLU features).
    """
    s1 = _psd_sqrt(np.asarray(cov1, np.float64))
    m = s1 @ np.asarray(cov2, np.float64) @ s1
    tr_covmean = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh((m + m.T) / 2), 0.0)))
    diff = np.asarray(mu1) - np.asarray(mu2)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_covmean)


def frechet_distance_of(feature_fn: Callable[[np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between two image sets in the feature space of `feature_fn`."""
    return frechet_distance(*gaussian_stats(feature_fn(a)), *gaussian_stats(feature_fn(b)))


def fid_with_features(inception_features: Callable[[np.ndarray], np.ndarray], samples, reference) -> float:
    """Standard FID, given the user's own local Inception feature function (no download).

    Args:
      inception_features: maps uint8 images (N, H, W, 3) to pool3 features (N, 2048).
      samples, reference: uint8 image arrays.
    """
    return frechet_distance_of(inception_features, samples, reference)


def class_stats(clf: DigitsClassifier, x01: np.ndarray) -> tuple[float, float]:
    """Mean max-probability (confidence) and entropy (nats) of the predicted-class histogram."""
    p = clf.probs(x01)
    hist = np.bincount(p.argmax(axis=1), minlength=p.shape[1]) / len(p)
    nz = hist[hist > 0]
    return float(p.max(axis=1).mean()), float(-(nz * np.log(nz)).sum())


def digits_quality(clf: DigitsClassifier, samples01: np.ndarray, train01: np.ndarray, test01: np.ndarray) -> dict:
    """Quality report of samples (N, 8, 8[, 1]) in [0, 1] against the digits splits.

    Returns a dict with the samples' Frechet distance, confidence and class entropy, and
    the same figures for the test split (the reference a perfect model would match).
    """
    ref = gaussian_stats(clf.features(train01))
    fd = lambda x: frechet_distance(*gaussian_stats(clf.features(x)), *ref)  # noqa: E731
    conf, ent = class_stats(clf, samples01)
    tconf, tent = class_stats(clf, test01)
    return {
        "frechet_distance": fd(np.clip(samples01, 0.0, 1.0)),
        "frechet_distance_test_split": fd(test01),
        "confidence": conf,
        "confidence_test_split": tconf,
        "class_entropy": ent,
        "class_entropy_test_split": tent,
        "class_entropy_max": float(np.log(clf.w2.shape[1])),
        "num_samples": int(len(samples01)),
    }
