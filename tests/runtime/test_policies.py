"""Exit policies are pure numpy and decide as documented."""
import math

import numpy as np
import pytest

from edgesdk.errors import InputError, UnknownNameError
from edgesdk.runtime.policies import POLICIES, get_policy, softmax

P = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [1.0, 0.0, 0.0]], np.float32)


def test_softmax_is_stable_and_normalised():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]], np.float32)
    p = softmax(logits.copy())
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[1], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum(), rtol=1e-6)


def test_max_softmax_margin_entropy():
    assert get_policy("max-softmax").exits(P, 0.7).tolist() == [True, False, True]
    np.testing.assert_allclose(get_policy("margin").score(P), [0.5, 0.05, 1.0], atol=1e-6)
    assert get_policy("margin").exits(P, 0.1).tolist() == [True, False, True]
    ent = get_policy("entropy")
    h0 = -sum(v * math.log(v) for v in (0.7, 0.2, 0.1))
    np.testing.assert_allclose(ent.score(P)[0], h0, rtol=1e-5)
    assert ent.score(P)[2] < 1e-6
    assert ent.exits(P, 0.9).tolist() == [True, False, True]


def test_threshold_ranges():
    assert get_policy("max-softmax").check_threshold(0.5, 10, "x") == 0.5
    assert get_policy("entropy").check_threshold(2.0, 10, "x") == 2.0
    with pytest.raises(InputError, match=r"outside \[0.0, 2.303\]"):
        get_policy("entropy").check_threshold(3.0, 10, "exit 0")
    with pytest.raises(InputError, match="not a number"):
        get_policy("margin").check_threshold("high", 10, "exit 0")
    assert get_policy("margin").check_threshold(None, 10, "x") is None


def test_unknown_policy_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid names: entropy, margin, max-softmax"):
        get_policy("oracle")
    assert POLICIES.names() == ["entropy", "margin", "max-softmax"]
