"""MNIST quality figures (score_sde.mnist_quality) on synthetic 28x28 classes (no real MNIST in CI).

Class k is a bright horizontal bar at rows 2k+4..2k+6 plus uniform noise: a CNN separates them after
one epoch, so the figures' expected behaviour is known: real images of the data reach the floor,
noise is far from it, true labels agree, shuffled labels agree at chance.
"""

import numpy as np
import pytest

from score_sde import mnist_quality as mq


def _bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = rng.uniform(0.0, 0.3, (n, 28, 28, 1))
    for i, k in enumerate(labels):
        x[i, 2 * k + 4:2 * k + 7, 4:24, 0] = rng.uniform(0.7, 1.0)
    return x, labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = _bars(1280, 0)
    path = str(tmp_path_factory.mktemp("clf") / "mnist_classifier.npz")
    clf = mq.load_or_train_classifier(path, x, y)
    return clf, path, x, y


def test_classifier_learns_and_cache_round_trips(trained):
    clf, path, _, _ = trained
    x, y = _bars(400, 1)
    assert clf.accuracy(x, y) > 0.95
    again = mq.load_or_train_classifier(path, x[:1], y[:1])   # from the cache: the same network
    np.testing.assert_allclose(again.features(x[:50]), clf.features(x[:50]), rtol=1e-6, atol=1e-6)


def test_quality_figures_separate_data_from_noise_and_wrong_labels(trained):
    """Measured: FD of held-out data ~ the floor (both < 25 % of the noise's FD); agreement 1.0 vs ~0.1."""
    clf, _, train, _ = trained
    test, test_labels = _bars(600, 2)
    held_out, held_labels = _bars(300, 3)
    good = mq.mnist_quality(clf, held_out, train, test, held_labels)
    noise = mq.mnist_quality(clf, np.random.default_rng(4).uniform(0, 1, (300, 28, 28, 1)), train, test)
    shuffled = mq.mnist_quality(clf, held_out, train, test, np.roll(held_labels, 1))
    assert good["frechet_distance"] < 0.25 * noise["frechet_distance"]
    assert good["frechet_distance_floor"] < 0.25 * noise["frechet_distance"]
    assert good["label_agreement"] > 0.95 and shuffled["label_agreement"] < 0.3
    assert "label_agreement" not in noise and good["num_samples"] == 300
    assert good["confidence"] > noise["confidence"]
