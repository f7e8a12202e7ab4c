"""Per-exit threshold calibration on labelled held-out data.

The bundle is run once over the data with every exit evaluated; thresholds are then searched
on those outputs with an exact simulation of the runtime (same policy, same rule that a
disabled exit's head is not run). Objectives:

(a) ``max_accuracy_drop``: the smallest mean cost whose accuracy is within that many points of
    the final exit's accuracy, with ``confidence`` (default 99%): the per-sample difference
    "final exit right" minus "chosen exit right" is a paired sample, and its one-sided upper
    confidence bound must stay within the allowed drop. Without it, a search over thousands of
    settings on ~1000 samples finds thresholds that only look free (measured on the sample
    model, 0.1-point target: 1.1 points lost on the test split with point estimates, 0.6 with
    a 95% bound, 0.2 with 99%; the search compares so many settings that 95% is too loose);
(b) ``max_cost_fraction``: the best accuracy whose mean cost is at most that fraction of the
    full model's cost.

Cost per stage and head is the counted MAC model in the manifest, until measured profiles
replace it.
"""
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.errors import CalibrationError, InputError
from edgesdk.profiles import dataset_sha256
from edgesdk.progress import Progress

CANDIDATES_PER_EXIT = 120
MAX_PASSES = 8


@dataclass
class OperatingPoint:
    """Predicted behaviour of one threshold setting on the calibration data."""

    thresholds: list           # per exit; None = exit disabled (last exit always None)
    accuracy: float
    mean_cost: float           # MACs per sample
    exit_fractions: list
    drop_se: float = 0.0       # standard error of the accuracy drop vs the final exit (paired)


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

    @property
    def cost_fraction(self):
        return self.point.mean_cost / self.full_cost


class ExitSimulator:
    """Replays early exiting for given thresholds on precomputed per-exit probabilities."""

    def __init__(self, probs, labels, policy, stage_costs, head_costs):
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

    @property
    def full_cost(self):
        """Cost with every early exit disabled: all stages and the final head."""
        return float(self.stage_costs.sum() + self.head_costs[-1])

    def evaluate(self, thresholds):
        """The :class:`OperatingPoint` of ``thresholds`` (list, None = disabled)."""
        remaining = np.ones(self.n, dtype=bool)
        chosen_correct = np.zeros(self.n, dtype=bool)
        cost_sum, paid = 0.0, 0.0
        fractions = []
        for k in range(self.k):
            last = k == self.k - 1
            paid += self.stage_costs[k]
            t = None if k in self.disabled else thresholds[k]
            if not last and t is None:
                fractions.append(0.0)
                continue
            paid += self.head_costs[k]
            if last:
                leave = remaining
            else:
                s = self.scores[k]
                leave = remaining & ((s >= t) if self.policy.higher_is_confident else (s <= t))
            count = int(leave.sum())
            chosen_correct |= self.correct[k] & leave
            cost_sum += count * paid
            fractions.append(count / self.n)
            remaining = remaining & ~leave
        diff = self.final_correct - chosen_correct.astype(np.int8)
        se = float(diff.std(ddof=1) / np.sqrt(self.n)) if self.n > 1 else 0.0
        return OperatingPoint(list(thresholds), float(chosen_correct.mean()), cost_sum / self.n,
                              fractions, se)

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
                      max_mean_cost=None, unit="MACs"):
    """Search thresholds for one objective; returns (OperatingPoint, objective dict).

    Objectives: ``max_accuracy_drop`` (points), ``max_cost_fraction`` (of the full model's
    cost) or ``max_mean_cost`` (absolute, in the simulator's cost ``unit``). ``confidence``
    applies to ``max_accuracy_drop``: the drop's one-sided upper confidence bound at this
    level must be within the allowed drop (0 compares point estimates).
    """
    if sum(v is not None for v in (max_accuracy_drop, max_cost_fraction, max_mean_cost)) != 1:
        raise InputError("give exactly one objective: max_accuracy_drop (points), "
                         "max_cost_fraction (of the full model's cost) or a cost budget")
    final_acc = sim.evaluate([None] * sim.k).accuracy
    eps = 1e-12
    if max_accuracy_drop is not None:
        if not 0 <= max_accuracy_drop <= 100:
            raise InputError("max_accuracy_drop is in percentage points, 0..100; got {}".format(
                max_accuracy_drop))
        if not 0 <= confidence < 1:
            raise InputError("confidence must be in [0, 1); got {}".format(confidence))
        z = NormalDist().inv_cdf(confidence) if confidence > 0 else 0.0
        allowed = max_accuracy_drop / 100.0
        point = sim.search(lambda p: final_acc - p.accuracy + z * p.drop_se <= allowed + eps,
                           lambda p, b: (p.mean_cost, -p.accuracy) < (b.mean_cost, -b.accuracy),
                           [None] * sim.k)
        return point, {"kind": "min-cost-within-accuracy-drop",
                       "max_accuracy_drop_points": max_accuracy_drop, "confidence": confidence}
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
    # Cheapest setting: every sample leaves at the first exit in use (a threshold every
    # score passes).
    lowest = (-np.inf if sim.policy.higher_is_confident else np.inf)
    first = min(set(range(sim.k - 1)) - sim.disabled, default=None)
    start = [float(lowest) if k == first else None for k in range(sim.k)]
    cheapest = sim.evaluate(start)
    if cheapest.mean_cost > budget + eps:
        raise CalibrationError(
            "a mean cost of {:.4g} {} ({:.1%} of the full model) cannot be met: the cheapest "
            "achievable is {:.4g} {} ({:.1%}), every sample leaving at exit {}".format(
                budget, unit, budget / sim.full_cost, cheapest.mean_cost, unit,
                cheapest.mean_cost / sim.full_cost, sim.k - 1 if first is None else first))
    point = sim.search(lambda p: p.mean_cost <= budget + eps,
                       lambda p, b: (-p.accuracy, p.mean_cost) < (-b.accuracy, b.mean_cost),
                       start)
    return point, objective


def calibrate(bundle_path, x, y, *, max_accuracy_drop=None, max_cost_fraction=None,
              confidence=0.99, policy=None, profile=None, device=None, budget_latency_ms=None,
              budget_energy_mj=None, p99=False, batch=1, batch_size=256, threads=None,
              progress=True):
    """Choose per-exit thresholds on labelled data and write them into the bundle's manifest.

    Exactly one objective: ``max_accuracy_drop`` (percentage points below the final exit's
    accuracy on this data, held with ``confidence``), ``max_cost_fraction`` (mean cost as a
    fraction of the full model's), or, with a measured ``profile`` database,
    ``budget_latency_ms`` / ``budget_energy_mj`` (mean per sample at ``batch``; ``p99`` sums
    per-graph p99 latencies instead of means, a conservative bound). With ``profile`` the
    costs are the measured ones of ``device`` (needed when the database holds several). ``policy`` switches every exit to another exit policy. The manifest is replaced
    atomically; on any error it is left as it was.
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
                                         max_mean_cost=budget, unit=unit)
    # Thresholds of -inf/inf (everything leaves) become the policy's range end in JSON.
    lo, hi = sim.policy.valid_range(model.num_classes)
    point.thresholds = [None if t is None else float(min(max(t, lo), hi)) for t in point.thresholds]
    point = sim.evaluate(point.thresholds)
    result = CalibrationResult(point, sim.evaluate([None] * sim.k).accuracy, sim.full_cost,
                               objective, sim.policy.name, len(y), unit)
    chosen = {"method": "calibrate", "objective": objective,
              "cost_model": ("counted MACs per stage and head" if costs is None else
                             "measured {} per stage and head".format(costs.metric)),
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
