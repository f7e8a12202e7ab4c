"""Bounded runs: a wall-clock deadline, a compute budget for a batch, a cap on the deepest exit.

Early exits save time on easy inputs only; an input that never becomes confident (noise, or
one perturbed on purpose to defeat the exits) runs every stage. These bounds stop that:

- ``deadline_ms``: before each stage after the first, the stage and its head are predicted from
  the profile tables (:class:`StageCosts`, p99 by default) and run only if they still finish
  in time; otherwise the samples keep the deepest exit they reached. When the time left fits
  only some samples of a batch, the least confident go on (they have the most to gain).
- ``budget_ms``: the same decision against a total compute budget for the batch, counted in
  predicted milliseconds rather than wall time, so the exits it hands out do not depend on
  the machine's noise.
- ``max_exit``: the deepest exit any sample may reach.

Every exit head runs on the samples that reach it (anytime prediction), so a stopped sample
always has an answer. Python 3.6 / numpy 1.19 compatible.
"""
import time

import numpy as np

from edgesdk.errors import InputError
from edgesdk.runtime.policies import softmax


class StageCosts(object):
    """Predicted milliseconds per sample of each stage and each head (batch 1), plus the
    engine's own work (the profiler's runtime rows): ``runtime_ms`` per stage step,
    ``head_runtime_ms`` per early head run (softmax, exit decision), ``final_ms`` for the
    final head and ``call_ms`` once per call; from a profile store or given by hand."""

    def __init__(self, stage_ms, head_ms, runtime_ms=0.0, source="given", head_runtime_ms=0.0,
                 call_ms=0.0, final_ms=0.0):
        self.stage_ms = [float(v) for v in stage_ms]
        self.head_ms = [float(v) for v in head_ms]
        self.runtime_ms = float(runtime_ms)
        self.head_runtime_ms = float(head_runtime_ms)
        self.final_ms = float(final_ms)
        self.call_ms = float(call_ms)
        self.source = source
        if len(self.stage_ms) != len(self.head_ms) or any(
                not np.isfinite(v) or v < 0 for v in self.stage_ms + self.head_ms):
            raise InputError("stage costs need one finite non-negative value per stage and per "
                             "head, got {} and {}".format(stage_ms, head_ms))

    def step_ms(self, k):
        """Predicted ms per sample of stage ``k`` with its head and the engine's work."""
        head = self.final_ms if k == len(self.stage_ms) - 1 else self.head_runtime_ms
        return self.stage_ms[k] + self.head_ms[k] + self.runtime_ms + head

    @classmethod
    def from_store(cls, db, model, metric="p99_ms", device=None):
        """The costs of ``model``'s builds in use, measured at batch 1 and stored in the
        profile store ``db``, on ``device`` or the device :func:`edgesdk.costs.bundle_rows`
        chooses (the only one the store has, else this one)."""
        from edgesdk.costs import cost_table
        builds = dict((gid, (b["format"], b["precision"])) for gid, b in model.builds.items())
        table = cost_table(db, model.bundle.manifest, metric, device, batch=1, builds=builds)
        e = table.engine
        return cls(table.graph_stage, table.graph_head, e["stage"],
                   source="{} {} on {}".format(db, metric, table.device), head_runtime_ms=e["head"],
                   call_ms=e["call"], final_ms=e["final"])


def run_bounded(model, x, thr, deadline_ms=None, budget_ms=None, max_exit=None):
    """Run a checked batch ``x`` under the bounds (see the module doc). ``thr``: per-exit
    thresholds (None disables an exit's early stop; its head still runs). Returns
    ``(probabilities, exit_index, timeline, notes)``: ``timeline`` as :meth:`EdgeModel.run`
    keeps it, ``notes`` what the bounds did."""
    clock = time.perf_counter
    start = clock()
    n = x.shape[0]
    last = model.num_exits - 1 if max_exit is None else int(max_exit)
    costs = model.costs
    if (deadline_ms is not None or budget_ms is not None) and costs is None:
        raise InputError("a deadline or budget needs the stages' predicted costs: "
                         "model.use_profile(DB) with a profile store measured on this device, "
                         "or model.costs = StageCosts(...)")
    probs = np.empty((n, model.num_classes), dtype=np.float32)
    exit_index = np.empty(n, dtype=np.int64)
    alive, state, timeline, notes = np.arange(n), (x,), [], []
    confidence, hint = None, None
    limit = deadline_ms if deadline_ms is not None else budget_ms
    # The engine's once-per-call work (input checks, result assembly) is part of the call.
    spent = costs.call_ms if limit is not None else 0.0
    for k in range(last + 1):
        if limit is not None:
            step = costs.step_ms(k)
            left = limit - ((clock() - start) * 1000.0 + costs.call_ms if deadline_ms is not None
                            else spent)
            if k == 0:
                if step * alive.size > left:
                    notes.append("{} of {:.3g} ms is shorter than the cheapest exit ({:.3g} ms "
                                 "predicted for {} sample(s)): returning exit 0".format(
                                     "the deadline" if deadline_ms is not None else "the budget",
                                     limit, step * alive.size, alive.size))
            else:
                fit = alive.size if step <= 0 else max(0, int(left // step))
                if fit < alive.size:
                    keep = np.zeros(alive.size, dtype=bool)
                    keep[np.argsort(confidence, kind="stable")[:fit]] = True  # least confident
                    notes.append("{} sample(s) stopped at exit {}: exit {} needs {:.3g} ms per "
                                 "sample, {:.3g} ms left".format(alive.size - fit, k - 1, k,
                                                                 step, max(left, 0.0)))
                    if fit == 0:
                        break
                    alive, confidence = alive[keep], confidence[keep]
                    state = [s[keep] for s in state]
            spent += step * alive.size
        t0 = clock()
        state = model.stages[k].run(state, hint) if model._routed[k] else \
            model.stages[k].run(state)
        p = softmax(model.heads[k].run(state)[0])
        probs[alive] = p
        exit_index[alive] = k
        timeline.append((alive, clock() - t0))
        policy = model.policies[k]
        score = policy.score(p) if policy.higher_is_confident else -policy.score(p)
        keep_all = True
        if k < last and thr[k] is not None:
            keep = ~policy.exits(p, thr[k])
            keep_all = bool(keep.all())
            if not keep_all:
                alive, score = alive[keep], score[keep]
                if alive.size == 0:
                    break
                state = [s[keep] for s in state]
        confidence = score
        hint = p if keep_all else p[keep]
    return probs, exit_index, timeline, notes
