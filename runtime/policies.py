"""Exit policies: decide from an exit's class probabilities whether a sample stops there.

Pure numpy (Python 3.6 / numpy 1.19). Every policy has a ``score`` and a direction: a sample
exits when ``score >= threshold`` (max-softmax, margin) or ``score <= threshold`` (entropy).
"""
import math

import numpy as np

from edgesdk.errors import InputError
from edgesdk.registry import Registry


# The ufuncs' own reductions: ndarray.max()/.sum() reach them through a Python wrapper,
# which on a batch of one costs as much as the reduction itself.
_max, _sum = np.maximum.reduce, np.add.reduce


def softmax(logits):
    """Row-wise softmax (a new array), stable for large logits; float arrays keep their
    dtype, others become float64."""
    z = logits - _max(logits, axis=1, keepdims=True)
    if z.dtype.kind != "f":
        z = z.astype(np.float64)
    np.exp(z, out=z)  # in place: the array is already new
    z /= _sum(z, axis=1, keepdims=True)
    return z


def sigmoid_limit(p):
    """The logit at and above which ``sigmoid(z) >= p``: ``log(p / (1 - p))`` (-inf for 0,
    inf for 1), so gates and maskers compare logits without an exponential per value."""
    p = float(p)
    if p <= 0.0:
        return -np.inf
    if p >= 1.0:
        return np.inf
    return float(np.log(p / (1.0 - p)))


class Policy(object):
    """Base class: ``name``, ``higher_is_confident`` and ``score(probs)``."""

    name = ""
    higher_is_confident = True

    def score(self, probs):
        raise NotImplementedError

    def valid_range(self, num_classes):
        return 0.0, 1.0

    def exits(self, probs, threshold):
        """Boolean mask of the samples confident enough to stop at this exit."""
        return self.leaves(self.score(probs), threshold)

    def leaves(self, scores, threshold):
        """The exit decision on scores already computed: what :meth:`exits` does after
        scoring, and what calibration replays (the same comparison, in the scores' dtype)."""
        return scores >= threshold if self.higher_is_confident else scores <= threshold

    def check_threshold(self, threshold, num_classes, where):
        """Refuse a threshold outside the policy's meaningful range."""
        lo, hi = self.valid_range(num_classes)
        if threshold is None:
            return None
        try:
            value = float(threshold)
        except (TypeError, ValueError, OverflowError):  # OverflowError: float(10**400)
            raise InputError("{}: threshold {!r} is not a number".format(where, threshold))
        if not (lo <= value <= hi):
            raise InputError("{}: {} threshold {} is outside [{}, {:.4g}]".format(
                where, self.name, value, lo, hi))
        return value


class MaxSoftmax(Policy):
    """Exit when the top class probability reaches the threshold."""

    name = "max-softmax"

    def score(self, probs):
        return _max(probs, axis=1)


class Margin(Policy):
    """Exit when top-1 minus top-2 probability reaches the threshold."""

    name = "margin"

    def score(self, probs):
        top2 = np.partition(probs, -2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]


class Entropy(Policy):
    """Exit when the prediction entropy (nats) falls to the threshold or below."""

    name = "entropy"
    higher_is_confident = False

    def score(self, probs):
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)

    def valid_range(self, num_classes):
        return 0.0, math.log(num_classes)


POLICIES = Registry("exit policy", {
    "max-softmax": "edgesdk.runtime.policies:MaxSoftmax",
    "entropy": "edgesdk.runtime.policies:Entropy",
    "margin": "edgesdk.runtime.policies:Margin",
})


def get_policy(name):
    """An instance of the policy registered as ``name``."""
    return POLICIES.get(name)()
