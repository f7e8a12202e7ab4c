"""Decision thresholds with a margin from every sample's score, for tests.

Two backends (PyTorch and ONNX Runtime, or ONNX Runtime's AVX2 and AVX-512 VNNI kernels, or
ONNX Runtime 1.10 on Python 3.6 and the host's) agree on a score only to ~1e-6; a threshold
sitting that close to a sample's score flips its decision on some CPUs. A threshold placed in
the middle of a wide gap between sorted scores gives the same decisions everywhere.
"""
import numpy as np

# A half-gap of 5e-4 is far beyond the float32 error of a softmax score (~1e-6).
MIN_GAP = 1e-3


def threshold_with_margin(scores, quantile, window=0.25, min_gap=MIN_GAP):
    """A threshold near the ``quantile`` of ``scores`` at the midpoint of the largest gap
    between consecutive sorted scores whose quantile is within ``window`` of it.

    Asserts that gap is at least ``min_gap``, so no sample's decision depends on float
    error. Returns ``(threshold, gap)``.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    s = s[np.isfinite(s)]
    n = len(s)
    assert n >= 2, "need at least two finite scores to place a threshold between"
    lo = int(np.clip(np.floor((quantile - window) * (n - 1)), 0, n - 2))
    hi = int(np.clip(np.ceil((quantile + window) * (n - 1)), lo + 1, n - 1))
    gaps = np.diff(s[lo:hi + 1])
    i = lo + int(np.argmax(gaps))
    gap = float(s[i + 1] - s[i])
    assert gap >= min_gap, ("no gap of {} between scores near quantile {} (largest {:.3g}): "
                            "the decisions would depend on float error".format(
                                min_gap, quantile, gap))
    return float((s[i] + s[i + 1]) / 2.0), gap


def margin(scores, threshold):
    """The smallest distance of any score to ``threshold`` (how safe a decision is)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    return float(np.min(np.abs(s - threshold))) if len(s) else float("inf")


def decisive(logits, min_margin=MIN_GAP):
    """Rows of ``logits`` (or probabilities) whose top two values differ by more than
    ``min_margin``: their argmax does not depend on which backend computed them."""
    top2 = np.sort(np.asarray(logits, dtype=np.float64), axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > min_margin


def exit_thresholds(model, x, quantile=0.5, min_gap=MIN_GAP):
    """Per-exit thresholds for a loaded bundle (``None`` for the final exit): each exit's
    policy score on ``x`` split near ``quantile`` in a gap of at least ``min_gap``, so
    runs that compute the scores differently (other batch sizes, backends, CPUs) exit the
    same samples at the same exits."""
    probs = model.exit_probabilities(x)
    return [threshold_with_margin(policy.score(p), quantile, min_gap=min_gap)[0]
            for policy, p in zip(model.policies[:-1], probs[:-1])] + [None]
