"""Per-exit threshold calibration on labelled held-out data.

The bundle is run once over the data with every exit evaluated; thresholds are then chosen
on those outputs with an exact simulation of the runtime (same policy, same rule that a
disabled exit's head is not run). Objectives:

(a) ``max_accuracy_drop``: the cheapest thresholds whose accuracy drop below the final exit
    is certified to stay within that many points with probability ``confidence`` (default
    0.99) over the draw of the calibration data, by Learn then Test (see
    :mod:`~edgesdk.converters.risk`):

    1. A path of settings is fixed without the labels: one common threshold ``lambda`` for
       every early exit, from the most conservative (no sample leaves early) to the most
       aggressive (finest at the confident end), each with the early exits whose head costs
       more than it saves at that ``lambda`` switched off (a cost from the unlabelled scores).
    2. The settings are tested in that order: the exact one-sided Clopper-Pearson bound on
       P(final exit right, chosen exit wrong) must be within the target; testing stops at the
       first failure. Every setting tested before it holds the target simultaneously with
       probability >= ``confidence``, so the cheapest of them is chosen.

    ``path="split"`` instead searches a path with the coordinate search below on half of the
    data (point estimates, an increasing number of losses allowed) and tests it on the other
    half. It halves the samples behind the bound: on MNIST, sklearn digits and lfw at 50-1000
    samples it was never cheaper than the label-free path (``benchmarks/calibration.py``).
    A target that ``n`` samples cannot certify even with no loss (``n < log(1 - confidence)
    / log(1 - target)``) is refused with the smallest target ``n`` can certify. Without this,
    a search over thousands of settings with mean + z x standard error accepted settings with
    no observed disagreement (standard error 0) from a single sample. ``confidence=0``
    compares point estimates with the coordinate search: no guarantee.
(b) ``max_cost_fraction`` / a cost budget: the best accuracy whose mean cost is at most that
    fraction of the full model's cost (or the budget), by coordinate search over per-exit
    thresholds. These are cost constraints, not risk: the exact bound of the chosen point's
    drop is reported too, but it is not a guarantee (the search chose the point on the same
    data).

Cost per stage and head is the counted MAC model in the manifest, until measured profiles
replace it. The bound, ``n``, the confidence and the method go into each exit's
``chosen_from["risk"]``.
"""
from dataclasses import dataclass, field

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.converters import risk
from edgesdk.errors import CalibrationError, InputError
from edgesdk.profiles import dataset_sha256
from edgesdk.progress import Progress

CANDIDATES_PER_EXIT = 120
MAX_PASSES = 8
PATH_POINTS = 400   # common-threshold levels on the label-free path (every score near the top)
PATHS = ("scores", "split")
SPLIT_SEED = 0
SPLIT_SEARCHES = 8


@dataclass
class OperatingPoint:
    """Predicted behaviour of one threshold setting on the calibration data."""

    thresholds: list           # per exit; None = exit disabled (last exit always None)
    accuracy: float
    mean_cost: float           # MACs per sample
    exit_fractions: list
    drop_se: float = 0.0       # standard error of the accuracy drop vs the final exit (paired)
    losses: int = 0            # samples the final exit gets right and this setting wrong
    gains: int = 0             # samples this setting gets right and the final exit wrong
    risk: dict = field(default=None)   # the accuracy drop's bound and how it was obtained


@dataclass
class CalibrationResult:
    """What :func:`calibrate` chose and what it expects."""

    point: OperatingPoint
    final_exit_accuracy: float
    full_cost: float
    objective: dict
    policy: str
    samples: int
    unit: str = "MACs"
    cost_model: str = "counted MACs per stage and head"

    @property
    def cost_fraction(self):
        return self.point.mean_cost / self.full_cost

    @property
    def risk(self):
        """The chosen point's accuracy-drop bound record (see :func:`risk.risk_record`)."""
        return self.point.risk


class ExitSimulator:
    """Replays early exiting for given thresholds on precomputed per-exit probabilities."""

    def __init__(self, probs, labels, policy, stage_costs, head_costs):
        # The policy's own scores and decision (Policy.leaves), in the dtype the runtime
        # compares them in: a threshold between a float32 score and its float64 value must
        # decide here as it does on the device.
        self._setup([policy.score(p) for p in probs], [p.argmax(axis=1) == labels for p in probs],
                    policy, stage_costs, head_costs)

    @classmethod
    def from_scores(cls, scores, correct, policy, stage_costs, head_costs):
        """A simulator from stored per-exit scores and correctness (no probabilities needed)."""
        sim = cls.__new__(cls)
        sim._setup([np.asarray(s, dtype=np.float64) for s in scores],
                   [np.asarray(c, dtype=bool) for c in correct], policy, stage_costs, head_costs)
        return sim

    def _setup(self, scores, correct, policy, stage_costs, head_costs):
        self.policy = policy
        self.scores = scores
        self.correct = correct
        self.final_correct = self.correct[-1].astype(np.int8)
        self.stage_costs = np.asarray(stage_costs, dtype=np.float64)
        self.head_costs = np.asarray(head_costs, dtype=np.float64)
        self.n = len(correct[0])
        self.k = len(scores)
        self.disabled = set()  # exits never enabled (dropped at conversion)

    def subset(self, rows):
        """A simulator of the samples ``rows`` only (same policy, costs and dropped exits)."""
        sim = ExitSimulator.from_scores([s[rows] for s in self.scores],
                                        [c[rows] for c in self.correct], self.policy,
                                        self.stage_costs, self.head_costs)
        sim.disabled = set(self.disabled)
        return sim

    @property
    def full_cost(self):
        """Cost with every early exit disabled: all stages and the final head."""
        return float(self.stage_costs.sum() + self.head_costs[-1])

    def _route(self, thresholds):
        """Per exit, the mask of samples leaving there; and the mean cost. Labels unused."""
        remaining = np.ones(self.n, dtype=bool)
        cost_sum, paid = 0.0, 0.0
        leaving = []
        for k in range(self.k):
            last = k == self.k - 1
            paid += self.stage_costs[k]
            t = None if k in self.disabled else thresholds[k]
            if not last and t is None:
                leaving.append(None)
                continue
            paid += self.head_costs[k]
            if last:
                leave = remaining
            else:
                leave = remaining & self.policy.leaves(self.scores[k], t)
            cost_sum += int(leave.sum()) * paid
            leaving.append(leave)
            remaining = remaining & ~leave
        return leaving, cost_sum / self.n

    def mean_cost(self, thresholds):
        """Mean cost per sample of ``thresholds``, from the scores alone (no labels)."""
        return self._route(thresholds)[1]

    def evaluate(self, thresholds):
        """The :class:`OperatingPoint` of ``thresholds`` (list, None = disabled)."""
        leaving, mean_cost = self._route(thresholds)
        chosen_correct = np.zeros(self.n, dtype=bool)
        fractions = []
        for k, leave in enumerate(leaving):
            if leave is None:
                fractions.append(0.0)
                continue
            chosen_correct |= self.correct[k] & leave
            fractions.append(int(leave.sum()) / self.n)
        final = self.correct[-1]
        diff = self.final_correct - chosen_correct.astype(np.int8)
        se = float(diff.std(ddof=1) / np.sqrt(self.n)) if self.n > 1 else 0.0
        return OperatingPoint(list(thresholds), float(chosen_correct.mean()), mean_cost,
                              fractions, se, int((final & ~chosen_correct).sum()),
                              int((chosen_correct & ~final).sum()))

    def candidates(self, k):
        """Threshold candidates for exit ``k``: quantiles of its scores, plus disabled."""
        if k in self.disabled:
            return [None]
        q = np.unique(np.quantile(self.scores[k], np.linspace(0.0, 1.0, CANDIDATES_PER_EXIT)))
        return [None] + [float(v) for v in q]

    def search(self, feasible, better, start):
        """Coordinate search over the early exits' thresholds from a feasible start."""
        best = self.evaluate(start)
        if not feasible(best):
            return None
        cands = [self.candidates(k) for k in range(self.k - 1)]
        for _ in range(MAX_PASSES):
            improved = False
            for k in range(self.k - 1):
                for c in cands[k]:
                    trial = list(best.thresholds)
                    trial[k] = c
                    point = self.evaluate(trial)
                    if feasible(point) and better(point, best):
                        best, improved = point, True
            if not improved:
                break
        return best

    def _cheapest_exits(self, enabled, level):
        """All ``enabled`` early exits at threshold ``level``, less those whose removal lowers
        the mean cost (most saving first): a label-free choice."""
        on = list(enabled)

        def setting(exits):
            return [level if k in exits else None for k in range(self.k)]
        cost = self.mean_cost(setting(on))
        while on:
            trial, k = min((self.mean_cost(setting([e for e in on if e != k])), k) for k in on)
            if trial >= cost:
                break
            on.remove(k)
            cost = trial
        return setting(on)

    def score_path(self):
        """The label-free path (most conservative first): no early exit, then one common
        threshold at each pooled early-exit score level, from the most confident down (every
        level at first, geometrically sparser later), with the exits that do not pay for
        themselves there switched off. A generator: testing usually stops early."""
        yield [None] * self.k
        enabled = [k for k in range(self.k - 1) if k not in self.disabled]
        if not enabled:
            return
        levels = np.unique(np.concatenate([self.scores[k] for k in enabled]))
        if self.policy.higher_is_confident:
            levels = levels[::-1]
        ranks = np.unique(np.round(np.geomspace(1, len(levels), PATH_POINTS)).astype(int)) - 1
        last = [None] * self.k
        for level in levels[ranks]:
            setting = self._cheapest_exits(enabled, float(level))
            if setting != last:
                yield setting
                last = setting

    def split_path(self, confidence, max_drop):
        """``(test simulator, path)``: a path searched on a random half (coordinate search
        with at most m losses there, m = 0, 1, ...), to be tested on the other half."""
        order = np.random.default_rng(SPLIT_SEED).permutation(self.n)
        search, test = self.subset(order[:self.n // 2]), self.subset(order[self.n // 2:])
        allowed = 0
        while allowed < test.n and risk.certified(allowed + 1, test.n, max_drop, confidence):
            allowed += 1
        path = [[None] * self.k]
        # Up to SPLIT_SEARCHES searches, allowing 0 .. 2 x (the losses the test half may have)
        # + 2 losses on the search half.
        for m in np.unique(np.round(np.linspace(0, 2 * allowed + 2, SPLIT_SEARCHES))).astype(int):
            point = search.search(lambda p: p.losses <= m, _cheaper, [None] * self.k)
            if point.thresholds not in path:
                path.append(point.thresholds)
        return test, path


def _cheaper(p, b):
    return (p.mean_cost, -p.accuracy) < (b.mean_cost, -b.accuracy)


def _check_data(x, y, num_classes):
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise InputError("labels must be a 1-D integer array, got shape {} dtype {}".format(
            list(y.shape), y.dtype))
    if len(y) != len(x):
        raise InputError("{} inputs but {} labels".format(len(x), len(y)))
    if len(y) == 0:
        raise InputError("calibration needs at least one labelled sample")
    if y.min() < 0 or y.max() >= num_classes:
        raise InputError("labels must be in 0..{}, found {}..{}".format(
            num_classes - 1, int(y.min()), int(y.max())))
    return y.astype(np.int64)


def exit_probabilities(model, x, batch_size=256, progress=True):
    """Probabilities at every exit for ``x``, with a progress bar."""
    with Progress(len(x), "running exits", enabled=progress) as bar:
        return model.exit_probabilities(x, batch_size=batch_size, progress=bar.update)


def simulator_for(model, probs, y, policy_name=None, costs=None):
    """An :class:`ExitSimulator` for a loaded bundle.

    ``costs``: a measured :class:`~edgesdk.converters.cost_model.CostTable`; default: the
    MACs counted in the manifest.
    """
    from edgesdk.runtime.policies import get_policy
    m = model.bundle.manifest
    policy = get_policy(policy_name or m["exits"][0]["policy"])
    if costs is None:
        return ExitSimulator(probs, y, policy, [s["macs"] for s in m["stages"]],
                             [e["macs"] for e in m["exits"]])
    return ExitSimulator(probs, y, policy, costs.stage, costs.head)


def choose_thresholds(sim, max_accuracy_drop=None, max_cost_fraction=None, confidence=0.99,
                      max_mean_cost=None, unit="MACs", path="scores", refuse=False):
    """Choose thresholds for one objective; returns (OperatingPoint, objective dict).

    Objectives: ``max_accuracy_drop`` (points), ``max_cost_fraction`` (of the full model's
    cost) or ``max_mean_cost`` (absolute, in the simulator's cost ``unit``). ``confidence``:
    for ``max_accuracy_drop``, the probability that the chosen point's drop is within the
    target (exact bound + fixed-sequence test along ``path``, "scores" or "split"; see the
    module doc); 0 compares point estimates. The point's ``risk`` holds the bound record.
    A target this many samples cannot certify even with no loss raises
    :class:`CalibrationError` with ``refuse`` (as :func:`calibrate` does); without, the
    answer is the one certified setting, every early exit off (drop exactly 0), and
    ``risk["uncertifiable"]`` says why (callers that only inform keep working).
    """
    if sum(v is not None for v in (max_accuracy_drop, max_cost_fraction, max_mean_cost)) != 1:
        raise InputError("give exactly one objective: max_accuracy_drop (points), "
                         "max_cost_fraction (of the full model's cost) or a cost budget")
    risk.check_confidence(confidence)
    if max_accuracy_drop is not None:
        if not 0 <= max_accuracy_drop <= 100:
            raise InputError("max_accuracy_drop is in percentage points, 0..100; got {}".format(
                max_accuracy_drop))
        if path not in PATHS:
            raise InputError("path '{}' is not one of {}".format(path, ", ".join(PATHS)))
        objective = {"kind": "min-cost-within-accuracy-drop",
                     "max_accuracy_drop_points": max_accuracy_drop, "confidence": confidence}
        try:
            return _within_drop(sim, max_accuracy_drop / 100.0, confidence, path), objective
        except risk.Uncertifiable as e:
            if refuse:
                raise
            point = sim.evaluate([None] * sim.k)
            point.risk = risk.risk_record(0, 0, sim.n, confidence, reference=True, path=path,
                                          uncertifiable=str(e))
            return point, objective
    if max_cost_fraction is not None:
        if not 0 < max_cost_fraction <= 1:
            raise InputError("max_cost_fraction must be in (0, 1]; got {}".format(max_cost_fraction))
        budget = max_cost_fraction * sim.full_cost
        objective = {"kind": "max-accuracy-within-cost", "max_cost_fraction": max_cost_fraction}
    else:
        if not max_mean_cost > 0:
            raise InputError("the cost budget must be > 0; got {}".format(max_mean_cost))
        budget = float(max_mean_cost)
        objective = {"kind": "max-accuracy-within-cost", "max_mean_cost": budget, "unit": unit}
    point = _within_cost(sim, budget, unit)
    point.risk = risk.risk_record(
        point.losses, point.gains, sim.n, confidence,
        method="clopper-pearson bound on P(final exit right, chosen exit wrong) of this one "
               "setting; not a guarantee: a cost search chose it on the same data",
        reference=all(t is None for t in point.thresholds[:-1]))
    return point, objective


def _within_drop(sim, allowed, confidence, path):
    """The cheapest point within ``allowed`` (fraction) drop (see the module doc)."""
    eps = 1e-12
    reference = [None] * sim.k
    if confidence == 0:   # point estimates: the coordinate search
        final_acc = sim.evaluate(reference).accuracy
        point = sim.search(lambda p: final_acc - p.accuracy <= allowed + eps, _cheaper, reference)
        point.risk = risk.risk_record(point.losses, point.gains, sim.n, 0, path="coordinate search")
        return point
    if path == "split":
        if sim.n < 2:
            raise risk.Uncertifiable("the split path needs at least 2 labelled samples, got "
                                     "{}".format(sim.n))
        risk.require_certifiable(allowed, sim.n - sim.n // 2, confidence,
                                 "the test half of {} samples".format(sim.n))
        tester, settings = sim.split_path(confidence, allowed)
    else:
        risk.require_certifiable(allowed, sim.n, confidence)
        tester, settings = sim, sim.score_path()
    good, tested, _ = risk.fixed_sequence(settings, tester.evaluate, tester.n, allowed,
                                          confidence)
    thresholds, result = min(good, key=lambda g: (g[1].mean_cost, -g[1].accuracy))
    point = sim.evaluate(thresholds)
    point.risk = risk.risk_record(
        result.losses, result.gains, tester.n, confidence,
        reference=all(t is None for t in thresholds[:-1]),
        path="label-free common threshold" if path == "scores" else
             "coordinate search on one half, tested on the other",
        settings_tested=tested, settings_certified=len(good))
    return point


def _within_cost(sim, budget, unit):
    """The most accurate point with a mean cost within ``budget`` (coordinate search)."""
    eps = 1e-12
    # Cheapest setting: every sample leaves at the first exit in use (a threshold every
    # score passes).
    lowest = (-np.inf if sim.policy.higher_is_confident else np.inf)
    first = min(set(range(sim.k - 1)) - sim.disabled, default=None)
    start = [float(lowest) if k == first else None for k in range(sim.k)]
    # With the engine's own work in measured costs, an exit head can cost more than the
    # stages it saves (tiny models): then every exit off is the cheapest setting.
    start = min((start, [None] * sim.k), key=lambda t: sim.evaluate(t).mean_cost)
    cheapest = sim.evaluate(start)
    if cheapest.mean_cost > budget + eps:
        raise CalibrationError(
            "a mean cost of {:.4g} {} ({:.1%} of the full model) cannot be met: the cheapest "
            "achievable is {:.4g} {} ({:.1%}), every sample leaving at exit {}".format(
                budget, unit, budget / sim.full_cost, cheapest.mean_cost, unit,
                cheapest.mean_cost / sim.full_cost,
                sim.k - 1 if first is None or start[first] is None else first))
    return sim.search(lambda p: p.mean_cost <= budget + eps,
                      lambda p, b: (-p.accuracy, p.mean_cost) < (-b.accuracy, b.mean_cost),
                      start)


def calibrate(bundle_path, x, y, *, max_accuracy_drop=None, max_cost_fraction=None,
              confidence=0.99, policy=None, profile=None, device=None, budget_latency_ms=None,
              budget_energy_mj=None, p99=False, batch=1, batch_size=256, threads=None,
              progress=True):
    """Choose per-exit thresholds on labelled data and write them into the bundle's manifest.

    Exactly one objective: ``max_accuracy_drop`` (percentage points below the final exit's
    accuracy, certified with probability ``confidence`` by an exact bound; see the module
    doc; a target the data cannot certify raises :class:`CalibrationError`),
    ``max_cost_fraction`` (mean cost as a fraction of the full model's), or, with a measured ``profile`` database,
    ``budget_latency_ms`` / ``budget_energy_mj`` (mean per sample at ``batch``; ``p99`` sums
    per-graph p99 latencies instead of means, a conservative bound). With ``profile`` the
    costs are the measured ones of ``device`` (needed when the database holds several).
    ``policy`` switches every exit to another exit policy. The manifest is replaced
    atomically; on any error it is left as it was. Each early exit's ``chosen_from`` records
    the objective, the data, the expected behaviour and ``risk``: the accuracy drop's exact
    upper bound, ``n``, the confidence and the method.
    """
    from edgesdk.runtime.engine import load_bundle
    model = load_bundle(bundle_path, threads=threads)
    y = _check_data(x, y, model.num_classes)
    costs, unit, budget = None, "MACs", None
    if budget_latency_ms is not None or budget_energy_mj is not None:
        if profile is None:
            raise InputError("latency and energy budgets need measured costs: give profile= "
                             "(--profile DB from `edgesdk profile --db`)")
        if budget_latency_ms is not None and budget_energy_mj is not None:
            raise InputError("give one budget: latency or energy")
        budget = budget_latency_ms if budget_latency_ms is not None else budget_energy_mj
    if profile is not None:
        from edgesdk.converters.cost_model import cost_table
        metric = "energy_mj" if budget_energy_mj is not None else ("p99_ms" if p99 else "mean_ms")
        costs = cost_table(profile, model.bundle.manifest, metric, device, batch)
        unit = costs.unit
    probs = exit_probabilities(model, x, batch_size, progress)
    sim = simulator_for(model, probs, y, policy, costs)
    sim.disabled = {k for k, e in enumerate(model.bundle.manifest["exits"]) if e.get("dropped")}
    point, objective = choose_thresholds(sim, max_accuracy_drop, max_cost_fraction, confidence,
                                         max_mean_cost=budget, unit=unit, refuse=True)
    # Thresholds of -inf/inf (everything leaves) become the policy's range end in JSON.
    lo, hi = sim.policy.valid_range(model.num_classes)
    bound = point.risk
    point = sim.evaluate([None if t is None else float(min(max(t, lo), hi))
                          for t in point.thresholds])
    point.risk = bound   # the same samples leave where they did: the same losses
    cost_model = ("counted MACs per stage and head" if costs is None else
                  "measured {} per stage and head".format(costs.metric))
    result = CalibrationResult(point, sim.evaluate([None] * sim.k).accuracy, sim.full_cost,
                               objective, sim.policy.name, len(y), unit, cost_model)
    chosen = {"method": "calibrate", "objective": objective, "cost_model": cost_model,
              "risk": point.risk,
              "profile": costs.record() if costs is not None else None,
              "data": {"samples": len(y), "sha256": dataset_sha256(x, y)},
              "expected": {"accuracy": point.accuracy, "final_exit_accuracy": result.final_exit_accuracy,
                           "mean_cost_fraction": result.cost_fraction,
                           "mean_cost": point.mean_cost, "unit": unit,
                           "exit_fractions": point.exit_fractions}}

    def change(manifest):
        for k, ex in enumerate(manifest["exits"]):
            ex["policy"] = sim.policy.name
            if k < len(manifest["exits"]) - 1 and not ex.get("dropped"):
                ex["threshold"] = point.thresholds[k]
                ex["chosen_from"] = chosen
    bundle_io.update_manifest(model.bundle.root, change)
    return result
