"""The weight-free digits quality measure separates real digits from noise and blurred digits."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from score_sde import quality


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = d.images / 16.0
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1497], idx[1497:]
    return x[tr], d.target[tr], x[te]


def test_frechet_distance_closed_form():
    """Two Gaussians with commuting covariances: ||dmu||^2 + sum (sqrt(a) - sqrt(b))^2."""
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, -1.0])
    c1, c2 = np.diag([4.0, 1.0]), np.diag([1.0, 9.0])
    want = 1 + 4 + (2 - 1) ** 2 + (1 - 3) ** 2
    assert quality.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(want, rel=1e-9)
    assert quality.frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9)


def test_digits_quality_ranks_real_above_corrupted(digits, tmp_path):
    train, labels, test = digits
    path = str(tmp_path / "clf.npz")
    clf = quality.load_or_train_classifier(path, train, labels)
    assert (tmp_path / "clf.npz").exists()
    test_labels = load_digits().target[np.random.default_rng(0).permutation(1797)[1497:]]
    assert np.mean(clf.probs(test).argmax(1) == test_labels) > 0.9
    # The cached classifier reloads identically.
    again = quality.load_or_train_classifier(path, train, labels)
    np.testing.assert_array_equal(again.w1, clf.w1)
    rng = np.random.default_rng(1)
    noise = rng.uniform(size=(300, 8, 8))
    blurred = 0.5 * test + 0.5 * test.mean(0)
    real = quality.digits_quality(clf, test, train, test)
    bad = quality.digits_quality(clf, noise, train, test)
    mid = quality.digits_quality(clf, blurred, train, test)
    assert real["frechet_distance"] == pytest.approx(real["frechet_distance_test_split"])
    assert real["frechet_distance"] < mid["frechet_distance"] < bad["frechet_distance"]
    assert real["confidence"] > 0.9 and real["class_entropy"] > 0.95 * real["class_entropy_max"]
