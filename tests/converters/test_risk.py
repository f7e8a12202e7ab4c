"""The exact bound and the fixed-sequence test shared by exit, cascade and gate calibration."""
import math

import pytest

from edgesdk.converters import risk
from edgesdk.errors import CalibrationError, InputError

# (n, k, delta) -> the one-sided upper bound, from scipy.stats.beta.ppf(1 - delta, k + 1, n - k)
# (scipy 1.17.1), kept here so the check runs without scipy too.
KNOWN = {(10, 3, 0.1): 0.551730832383599, (100, 1, 0.1): 0.03833949749538697,
         (400, 2, 0.1): 0.013250640764908249, (1000, 5, 0.1): 0.009254858093067034,
         (50, 49, 0.1): 0.9978950082958632, (600, 4, 0.01): 0.019218805499871764}


class Run:
    def __init__(self, losses, gains=0):
        self.losses, self.gains = losses, gains


def test_zero_losses_bound_is_the_closed_form():
    assert risk.clopper_pearson_upper(0, 10, 0.1) == pytest.approx(0.2056717652757185, abs=1e-12)
    assert risk.clopper_pearson_upper(0, 10, 0.1) == pytest.approx(1 - 0.1 ** 0.1, abs=1e-15)
    assert risk.clopper_pearson_upper(7, 7, 0.1) == 1.0
    assert risk.smallest_certifiable(1, 0.99) == pytest.approx(0.99)


@pytest.mark.parametrize("n, k, delta", sorted(KNOWN))
def test_bound_matches_the_beta_quantile(n, k, delta):
    got = risk.clopper_pearson_upper(k, n, delta)
    assert got == pytest.approx(KNOWN[(n, k, delta)], rel=1e-9)
    # The bound is where the binomial tail equals delta.
    assert risk.binomial_cdf(k, n, got) == pytest.approx(delta, rel=1e-6)


def test_bound_matches_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    for n in (1, 2, 9, 57, 230, 1200):
        for k in sorted({0, 1, n // 3, n - 1} - {n}):   # k = n: the bound is 1
            for delta in (0.01, 0.1, 0.3):
                want = stats.beta.ppf(1 - delta, k + 1, n - k)
                assert risk.clopper_pearson_upper(k, n, delta) == pytest.approx(want, rel=1e-8), \
                    (n, k, delta)


def test_binomial_tail_against_a_direct_sum():
    for n, k, p in ((20, 3, 0.1), (200, 7, 0.02), (5, 5, 0.5), (30, 0, 0.3)):
        want = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))
        assert risk.binomial_cdf(k, n, p) == pytest.approx(want, rel=1e-12)
    assert risk.binomial_cdf(-1, 10, 0.5) == 0.0 and risk.binomial_cdf(3, 10, 0.0) == 1.0


def test_certified_agrees_with_the_bound_on_both_sides():
    for n, k in ((100, 0), (400, 2), (1000, 5)):
        u = risk.clopper_pearson_upper(k, n, 0.1)
        assert risk.certified(k, n, u * 1.001, 0.9)
        assert not risk.certified(k, n, u * 0.999, 0.9)


def test_samples_needed_is_the_smallest_n_that_certifies_with_no_loss():
    # 1 point at 90%: ceil(log(0.1) / log(0.99)) = ceil(229.1) = 230
    assert risk.samples_needed(0.01, 0.9) == 230
    assert risk.samples_needed(0.005, 0.99) == 919
    for target, conf in ((0.01, 0.9), (0.005, 0.99), (0.2, 0.95)):
        n = risk.samples_needed(target, conf)
        assert risk.certified(0, n, target, conf) and not risk.certified(0, n - 1, target, conf)
    assert risk.samples_needed(0.0, 0.9) is None


def test_one_sample_is_refused_with_what_it_can_certify_and_what_is_needed():
    with pytest.raises(CalibrationError) as e:
        risk.require_certifiable(0.01, 1, 0.99)
    msg = str(e.value)
    assert "1 labelled samples at confidence 0.99" in msg
    assert "no less than 99 points" in msg and "needs at least 459 samples" in msg
    with pytest.raises(CalibrationError, match="cannot be certified with any number"):
        risk.require_certifiable(0.0, 1000, 0.9)
    risk.require_certifiable(0.01, 230, 0.9)       # enough: no error
    risk.require_certifiable(0.01, 1, 0)           # point estimates: no refusal
    with pytest.raises(InputError, match="confidence"):
        risk.check_confidence(1.0)


def test_fixed_sequence_stops_at_the_first_failure():
    # n=400 at 90%: 2 losses certify 1.5 points (bound 1.33), 5 do not (bound 2.3).
    losses = [0, 1, 2, 5, 0, 0]
    seen = []

    def evaluate(i):
        seen.append(i)
        return Run(losses[i])
    good, tested, stop = risk.fixed_sequence(range(6), evaluate, 400, 0.015, 0.9)
    assert [g[0] for g in good] == [0, 1, 2]
    assert stop[0] == 3 and tested == 4 and seen == [0, 1, 2, 3]   # 4 and 5 never tested
    # Point estimates (confidence 0) scan everything: net drop (losses - gains) / n.
    good, tested, stop = risk.fixed_sequence(
        range(6), lambda i: Run(losses[i], gains=2 if i == 3 else 0), 400, 0.01, 0)
    assert [g[0] for g in good] == [0, 1, 2, 3, 4, 5] and tested == 6 and stop is None
    good, _, _ = risk.fixed_sequence(range(6), lambda i: Run(losses[i]), 400, 0.004, 0)
    assert [g[0] for g in good] == [0, 1, 4, 5]


def test_risk_record():
    rec = risk.risk_record(2, 1, 400, 0.9, path="p")
    assert rec["accuracy_drop_bound_points"] == pytest.approx(100 * KNOWN[(400, 2, 0.1)])
    assert rec["samples"] == 400 and rec["confidence"] == 0.9 and rec["path"] == "p"
    assert rec["observed_drop_points"] == pytest.approx(0.25) and "clopper-pearson" in rec["method"]
    assert risk.risk_record(0, 0, 10, 0.9, reference=True)["accuracy_drop_bound_points"] == 0.0
    assert risk.risk_record(3, 0, 10, 0)["accuracy_drop_bound_points"] is None
