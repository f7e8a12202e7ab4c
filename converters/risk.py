"""Exact risk control for threshold choices: a Clopper-Pearson bound on the paired accuracy
loss, tested along a fixed sequence of settings (Learn then Test).

Shared by exit thresholds (:mod:`~edgesdk.converters.calibrate`), cascade levels
(:mod:`~edgesdk.converters.cascade`) and gates (:mod:`~edgesdk.converters.adaptive_stages`).

**The loss.** Each calibration sample compares the reference (the final exit, the full
resolution, the ungated model) with the setting under test. A *loss* is a sample the
reference gets right and the setting gets wrong; a *gain* the reverse. The accuracy drop is
``P(loss) - P(gain) <= P(loss)``, so an upper bound on ``P(loss)`` bounds the drop. Gains are
ignored: that is conservative by ``P(gain)``, which is small for these models (a cheap answer
that is right where the full model is wrong), while bounding gains too would need a
Bonferroni split of the error level and raise the smallest certifiable drop at every ``n``.

**The bound.** Losses of a fixed setting on ``n`` i.i.d. samples are Binomial(n, p). The
one-sided Clopper-Pearson bound ``u(k)`` solves ``P(Binomial(n, u) <= k) = delta``; it is
exact (no normal approximation) and valid at any ``n``, including ``k = 0``, where it is
``1 - delta ** (1 / n)``: no ``n`` below ``log(delta) / log(1 - target)`` can certify a
target, whatever the data. Computed with the standard library (log-gamma binomial tail,
bisection on ``p``).

**Multiple testing.** A search compares many settings on the same data; the best-looking one
is biased. Fixed-sequence testing avoids paying for that: the settings are ordered before the
losses are looked at (from the most conservative to the most aggressive, by unlabelled scores
or on a disjoint split), each is tested at level ``delta = 1 - confidence`` in that order, and
testing stops at the first one whose bound exceeds the target. Every setting before the stop
then holds the target *simultaneously* with probability at least ``1 - delta``, so the
cheapest of them may be chosen freely.

``confidence = 0`` means point estimates, no guarantee: every setting on the path whose
observed drop ``(losses - gains) / n`` is within the target qualifies.
"""
import math

from edgesdk.errors import CalibrationError, InputError, Uncertifiable

METHOD = "clopper-pearson bound on P(reference right, setting wrong), fixed-sequence test"
POINT_ESTIMATE = "point estimate (no guarantee)"


def check_confidence(confidence):
    """``confidence`` must be 0 (point estimates) or in (0, 1)."""
    if not 0 <= confidence < 1:
        raise InputError("confidence must be in [0, 1) (0 compares point estimates); got {}"
                         .format(confidence))


def binomial_cdf(k, n, p):
    """``P(Binomial(n, p) <= k)``, summed in log space (exact to rounding for any ``n``)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    logs = [base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(int(k) + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def clopper_pearson_upper(k, n, delta):
    """One-sided upper ``1 - delta`` confidence bound on a binomial ``p`` after ``k``
    successes in ``n`` trials: the ``p`` with ``P(Binomial(n, p) <= k) = delta``."""
    if n <= 0:
        raise InputError("a bound needs at least one sample, got n={}".format(n))
    if not 0 < delta < 1:
        raise InputError("delta = 1 - confidence must be in (0, 1), got {}".format(delta))
    if k >= n:
        return 1.0
    if k == 0:
        return 1.0 - delta ** (1.0 / n)
    lo, hi = k / float(n), 1.0   # the cdf falls as p rises: bisect for cdf == delta
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if binomial_cdf(k, n, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return hi


def smallest_certifiable(n, confidence):
    """The smallest drop (fraction) ``n`` samples can certify: the bound at 0 losses."""
    return 1.0 - (1.0 - confidence) ** (1.0 / n)


def samples_needed(max_drop, confidence):
    """Samples needed to certify ``max_drop`` (fraction) with no loss observed."""
    if max_drop <= 0:
        return None
    if max_drop >= 1:
        return 1
    n = int(math.ceil(math.log(1.0 - confidence) / math.log1p(-max_drop)))
    while n > 1 and certified(0, n - 1, max_drop, confidence):  # rounding of the logs
        n -= 1
    while not certified(0, n, max_drop, confidence):
        n += 1
    return n


def certified(losses, n, max_drop, confidence):
    """Whether ``losses`` of ``n`` certify ``P(loss) <= max_drop`` at ``confidence``:
    ``u(losses) <= max_drop``, decided as the equivalent ``P(Binomial(n, max_drop) <=
    losses) <= delta`` (one tail, no bisection)."""
    if max_drop >= 1:
        return True
    return binomial_cdf(losses, n, max_drop) <= 1.0 - confidence


def require_certifiable(max_drop, n, confidence, what="calibration"):
    """Refuse a target that ``n`` samples cannot certify at ``confidence`` even with no loss,
    naming the smallest target this ``n`` can certify and the samples the target needs."""
    if confidence == 0 or certified(0, n, max_drop, confidence):
        return
    need = samples_needed(max_drop, confidence)
    raise Uncertifiable(
        "{}: {} labelled samples at confidence {:g} can certify an accuracy drop of no less "
        "than {:.3g} points (the exact Clopper-Pearson bound with no sample lost); the "
        "requested {:g} points {}. Give more labelled samples, a larger allowed drop or a "
        "lower confidence".format(
            what, n, confidence, 100.0 * smallest_certifiable(n, confidence), 100.0 * max_drop,
            "cannot be certified with any number of samples" if need is None else
            "needs at least {} samples".format(need)))


def fixed_sequence(path, evaluate, n, max_drop, confidence):
    """Test the settings of ``path`` (most conservative first, ordered without looking at
    losses) in order; ``evaluate(setting)`` returns an object with ``losses`` and ``gains``
    counts on the ``n`` samples. Returns ``(certified, tested, stop)``: ``certified`` is a
    list of ``(setting, result)``, with ``confidence > 0`` the prefix before the first
    setting whose bound exceeds ``max_drop`` (testing stops there: ``stop`` is that
    ``(setting, result)``, else None), with 0 every setting whose observed drop is within it.
    """
    good, tested = [], 0
    for setting in path:
        result = evaluate(setting)
        tested += 1
        if confidence > 0:
            if not certified(result.losses, n, max_drop, confidence):
                return good, tested, (setting, result)
        elif result.losses - result.gains > max_drop * n + 1e-9:
            continue
        good.append((setting, result))
    return good, tested, None


def risk_record(losses, gains, n, confidence, method=METHOD, reference=False, **extra):
    """What a ``chosen_from`` record says about the risk of the chosen setting: the exact
    upper bound on the accuracy drop (points), the counts it comes from, n, the confidence
    and the method. ``reference``: the setting is the reference itself (nothing leaves
    early), whose drop is exactly 0."""
    if confidence == 0:
        bound = None
    elif reference:
        bound = 0.0
    else:
        bound = 100.0 * clopper_pearson_upper(losses, n, 1.0 - confidence)
    record = {"method": method if confidence > 0 else POINT_ESTIMATE,
              "accuracy_drop_bound_points": bound, "confidence": confidence, "samples": int(n),
              "losses": int(losses), "gains": int(gains),
              "observed_drop_points": 100.0 * (losses - gains) / n}
    record.update(extra)
    return record
