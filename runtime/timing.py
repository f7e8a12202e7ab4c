"""Timing a loaded model inside its own runs: robust statistics, and the engine's own cost.

The profiler times every graph inside real :meth:`EdgeModel.run` calls (each graph wrapped in
a timer), so a graph is measured in the order, with the caches and with the engine work
around it that a real run has; the engine's own work in a call is the call's wall time minus
its graphs. The exits each run takes are forced through the thresholds (``-inf``/``inf`` on
the policies' own scores), so the exit decisions, compaction and bookkeeping timed are the
real ones. Several kinds of run (every sample leaving at exit j, for each j; and only the
final head) separate the engine's cost into three terms, fitted by least squares:

- ``call``: once per call (input checks, input statistics, result assembly, writing the
  exit taken);
- ``stage``: per stage step (the loop, the clock, the per-stage time record);
- ``head``: per early exit head that runs (softmax, the exit decision);
- ``final``: the final head's softmax, for the samples that reach it (less the exit write an
  early exit does, which ``call`` holds).

Statistics per series: mean, a 10% trimmed mean, p10/p50/p90/p99, min, std, and the spread
p90/p50; a series whose spread exceeds :data:`NOISY_SPREAD` is flagged ``noisy`` (a scheduler
spike or a loaded machine: profile again). Python 3.6 / numpy 1.19 compatible.
"""
import copy
import time

import numpy as np

from edgesdk.errors import InputError
from edgesdk.profiles import NOISY_SPREAD

# Share of the samples dropped at each end for the trimmed mean.
TRIM = 0.1
# The latency statistics every row carries (the cost model uses one, see cost_model.py).
STATISTICS = ("mean_ms", "trimmed_mean_ms", "p10_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms")

_clock = time.perf_counter


def trimmed_mean(values, cut=TRIM):
    """Mean after dropping ``floor(cut * n)`` of the smallest and as many of the largest
    values (scipy.stats.trim_mean's rule)."""
    a = np.sort(np.asarray(values, dtype=np.float64))
    k = int(a.size * cut + 1e-9)  # 1e-9: 0.1 * 30 must cut 3, not 2.9999...
    return float(a[k:a.size - k].mean())


def latency_stats(ms):
    """Summary of per-call latencies in milliseconds (see the module docstring)."""
    a = np.asarray(ms, dtype=np.float64)
    p10, p50, p90, p99 = (float(v) for v in np.percentile(a, [10, 50, 90, 99]))
    spread = p90 / p50 if p50 > 0 else None
    return {"mean_ms": float(a.mean()), "std_ms": float(a.std()),
            "trimmed_mean_ms": trimmed_mean(a), "p10_ms": p10, "p50_ms": p50, "p90_ms": p90,
            "p99_ms": p99, "min_ms": float(a.min()), "max_ms": float(a.max()), "spread": spread,
            "noisy": spread is not None and spread > NOISY_SPREAD, "repeats": int(a.size)}


class _Timed(object):
    """A graph whose calls append their seconds to ``times`` and add them to ``inside[0]``
    (flat lists of floats: nothing the garbage collector tracks is allocated per call)."""

    def __init__(self, graph, times, inside):
        self.graph, self.times, self.inside = graph, times, inside

    def run(self, *args):
        t0 = _clock()
        out = self.graph.run(*args)
        dt = _clock() - t0
        self.times.append(dt)
        self.inside[0] += dt
        return out

    def __getattr__(self, name):
        return getattr(self.graph, name)


def _never(policy):
    """A threshold at which ``policy`` never lets a sample exit."""
    return float("inf") if policy.higher_is_confident else float("-inf")


# The engine's terms, in the order of a run kind's counts and of fit_engine's result.
TERMS = ("call", "stage", "head", "final")


def run_kinds(model):
    """The kinds of run timed: ``[(name, thresholds, counts)]``: every sample leaving at exit
    j for each early exit j; every head with the final exit; and the final head only.
    ``counts``: how often each of :data:`TERMS` occurs in one call (once; stage steps; early
    heads run, the one left at included; the final head)."""
    k_last = model.num_exits - 1
    kinds = []
    for j in range(model.num_exits):
        thr = [_never(p) for p in model.policies[:-1]] + [None]
        if j < k_last:
            thr[j] = -_never(model.policies[j])
        kinds.append(("exit{}".format(j), thr, (1, j + 1, min(j + 1, k_last), int(j == k_last))))
    if k_last > 0:
        kinds.append(("final-head-only", [None] * model.num_exits, (1, k_last + 1, 0, 1)))
    return kinds


def _forced(model):
    """A shallow copy of ``model`` whose thresholds are forced (set ``.forced``); they are
    still validated as a real call does."""
    probe = copy.copy(model)
    probe.forced = None

    def resolve(thresholds):
        model.resolve_thresholds(None)  # the real call's validation cost
        return probe.forced
    probe.resolve_thresholds = resolve
    return probe


class _Null(object):
    def run(self, *args):
        return args


def _timer_cost(calls=2000, rounds=5):
    """Seconds a :class:`_Timed` timer adds to one graph call, measured on a graph that does
    nothing, best of ``rounds``: a lower bound (caches are warm), ~0.7 us here; see
    :func:`time_runs` for the estimate in place."""
    null, times, inside = _Null(), [], [0.0]
    timed = _Timed(null, times, inside)
    best = []
    for fn in (null.run, timed.run):
        t = []
        for _ in range(rounds):
            del times[:]
            t0 = _clock()
            for _ in range(calls):
                fn(None)
            t.append(_clock() - t0)
        best.append(min(t) / calls)
    return max(0.0, best[1] - best[0])


def time_runs(model, x, warmup=10, repeats=200, warmup_s=0.2, min_seconds=1.0, between=None,
              mix=None):
    """Time every graph and the engine inside real runs of the batch ``x``.

    Each round runs every kind of :func:`run_kinds` once (or a workload's mix of them, see
    ``mix``), interleaved so load changes hit them alike, and the run through every graph
    once more without timers. The timers' own cost per graph call, taken off the engine's
    share (a real run has none), is the difference of the p10s of that run with and without
    timers, at least the cost measured on a graph doing nothing (:func:`_timer_cost`): with
    the empty graph's 0.7 us alone the digits model's prediction was +1.7% to +6.2% off over
    5 runs, in place +0.2% to +3.0%; a difference of medians was swamped by a busy machine's
    stalls (ms). Warm-up rounds until at least ``warmup`` rounds and ``warmup_s`` seconds,
    then timed rounds until at least ``repeats`` and ``min_seconds``. ``between(seconds)``, if
    given, is called after every timed round with the round's duration (see
    :class:`~.profiler.InterleavedRuns`). ``mix``: the share of samples leaving at each exit
    in the workload the profile is for (see :func:`round_schedule`); each round then runs
    the kinds in about that proportion, so each graph meets the caches a run of that
    workload leaves. Returns ``(graph_ms, engine, kinds)``:
    ``graph_ms[slot]`` the per-call ms of stage k (slot 2k) and head k (slot 2k+1); ``engine``
    ``{kind name: per-call ms outside the graphs}``; ``kinds`` from :func:`run_kinds`.
    """
    inside = [0.0]
    graph_s = [[] for _ in range(2 * model.num_exits)]
    probe, plain = _forced(model), _forced(model)
    probe.stages = [_Timed(g, graph_s[2 * k], inside) for k, g in enumerate(model.stages)]
    probe.heads = [_Timed(g, graph_s[2 * k + 1], inside) for k, g in enumerate(model.heads)]
    kinds = run_kinds(model)
    full = max(kinds, key=lambda k: sum(k[2][1:]))
    plain.forced = full[1]
    raw = {name: [] for name, _, _ in kinds}   # (wall - graphs, graph calls) per run
    walls = {"timed": [], "plain": []}

    rng = np.random.RandomState(0)

    def one_round(keep):
        for k in round_schedule(kinds, mix, rng):
            name, thr, _ = kinds[k]
            probe.forced = thr
            inside[0] = 0.0
            before = sum(len(t) for t in graph_s)
            t0 = _clock()
            probe.run(x)
            wall = _clock() - t0
            if keep:
                raw[name].append((wall - inside[0], sum(len(t) for t in graph_s) - before))
                if name == full[0]:
                    walls["timed"].append(wall)
            else:
                for t in graph_s:
                    del t[:]
        t0 = _clock()
        plain.run(x)
        if keep:
            walls["plain"].append(_clock() - t0)

    for minimum, seconds, keep in ((warmup, warmup_s, False), (repeats, min_seconds, True)):
        end, done = _clock() + seconds, 0
        while done < minimum or _clock() < end:
            t0 = _clock()
            one_round(keep)
            done += 1
            if keep and between is not None:
                between(_clock() - t0)
    calls = raw[full[0]][0][1]
    timer = max(_timer_cost(), (np.percentile(walls["timed"], 10) -
                                np.percentile(walls["plain"], 10)) / calls)
    engine = {name: [(e - timer * n) * 1000.0 for e, n in raw[name]] for name in raw}
    return [[v * 1000.0 for v in t] for t in graph_s], engine, kinds


# Calls per round that follow a workload's exit mix (plus one of each kind it leaves out).
MIX_ROUND = 40


def round_schedule(kinds, mix=None, rng=None):
    """The kinds of one round, as indices into ``kinds``: each once without a ``mix``. With
    one (the share of samples leaving at each exit, one per exit): ``MIX_ROUND`` calls in
    that proportion in a random order (``rng``, a numpy RandomState; none: in runs of one
    kind), as a workload of independent samples takes them, then one call of each kind
    those left out (every graph is timed every round; the final-head-only kind is never
    part of a workload).

    Why: a call costs more after a call that took another path. On the sample (Intel Xeon,
    2 MB L2 per core) an exit-0 call took 0.21 ms after a run through every stage and 0.17 ms
    after another exit-0 call (stage 3's weights evict stage 0's); on the 38 us calls of a
    small digits model the Python work alone cost ~10% more when the path changed every
    call. One call of each kind per round changed path every call: the cost model
    over-predicted runs where most samples leave early by 5-8%.
    """
    if mix is None:
        return list(range(len(kinds)))
    shares = [float(s) for s in mix]
    if len(shares) != len(kinds) - (len(kinds) > 1) or min(shares) < 0 or sum(shares) <= 0:
        raise InputError("mix: one non-negative share per exit ({} here), not all 0; got {}"
                         .format(len(kinds) - (len(kinds) > 1), mix))
    total = sum(shares)
    counts = [int(round(MIX_ROUND * s / total)) for s in shares]
    body = [k for k, c in enumerate(counts) for _ in range(c)]
    if rng is not None:
        body = [body[i] for i in rng.permutation(len(body))]
    return body + [k for k in range(len(kinds)) if k >= len(counts) or not counts[k]]


def fit_engine(values, kinds):
    """Least-squares ms of each of :data:`TERMS` from one statistic of each run kind's engine
    time (``values``: {kind name: ms}); a term fitted below 0 is dropped and the rest fitted
    again (noise on a term that costs ~nothing). With fewer kinds than terms (one or two
    exits) the last terms are not separable and are folded into the first ones."""
    y = np.array([values[k[0]] for k in kinds], dtype=np.float64)
    design = np.array([k[2] for k in kinds], dtype=np.float64)
    active = list(range(min(len(TERMS), len(kinds))))
    coef = np.zeros(len(TERMS))
    while active:
        sol = np.linalg.lstsq(design[:, active], y, rcond=None)[0]
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return dict(zip(TERMS, (float(v) for v in coef)))
