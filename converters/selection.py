"""Conversion choices from measured profiles (``edgesdk convert --profile DB``).

1. **Builds**: for each stage and head, the cheapest measured build (e.g. INT8 where the
   board runs it faster, FP32 where it does not) among those whose top-1 agreement with the
   FP32 model stays at or above ``min_agreement`` and that save at least 5% of the graph's
   cost (less is within a shared machine's timing noise). Builds are taken greedily, biggest
   measured saving first, and a build is kept only if the whole model with it still agrees
   at every exit: errors of several quantized graphs add up.
2. **Exit heads**: an early exit costs its head for every sample that reaches it and saves
   the rest of the model for those that leave there. With labelled data, the exits that the
   cheapest threshold setting within ``exit_accuracy_drop`` points leaves disabled are
   dropped (that search already weighs each head's measured cost against what it saves).
   Without labels, a head is dropped when it costs at least as much as everything after it,
   the most it could ever save.
3. **Gated blocks**: each gate is kept only where it pays. From the profiler's side-by-side
   measurements of a gated stage (its own graph ``U``, its entry graph, the block loop, each
   block's run graph ``R`` and skip graph ``S``), every block boundary costs
   ``c = (entry + loop + sum R - U) / blocks`` (one more graph call); a gate whose block is
   skipped by the share ``1 - k`` of the calibration samples reaching it saves
   ``(1 - k) (R - S) - c`` per sample. Gates saving nothing are dropped: their blocks run
   inside the graph before them for every sample (the stage's pieces are exported again), and
   where no gate pays the stage's own graph runs. The prediction for the gates kept is
   ``U - sum of their savings``; with every gate kept that is the pieces' cost at the keep
   shares.

The measured table must be of exactly these graphs (same graphs sha256) from one device;
anything else is refused with the reason. Every choice, its costs and the table it came from
go into the manifest: ``build_chosen_from`` on each graph, ``chosen_from`` on dropped exits,
``dropped_gates`` (some blocks) or ``dropped`` (all of a stage's) on dropped gates.
"""

import os

from edgesdk.converters.builds import FEED_LIMIT, top1_labels
from edgesdk.manifest import graph_entries, precision_of
from edgesdk.converters.cost_model import build_costs, table_from_rows
from edgesdk.costs import bundle_rows
from edgesdk.runtime.build_select import graph_builds

DEFAULT_MIN_AGREEMENT = 0.99
MIN_SAVING = 0.05  # a build must save 5% of its graph's measured cost to be chosen
DEFAULT_EXIT_ACCURACY_DROP = 0.5


def _label(build):
    return "{} {}".format(build["format"], build["precision"])


def choose_builds(draft, costs, x, baseline, min_agreement):
    """``({graph id: (format, precision)}, worst top-1 agreement per exit)`` chosen greedily."""
    candidates = []
    for entry in graph_entries(draft.manifest):
        builds = graph_builds(entry)
        current = costs.get((entry["id"], builds[0]["format"], builds[0]["precision"]))
        for b in (builds[1:] if current is not None else []):
            cost = costs.get((entry["id"], b["format"], b["precision"]))
            agreement = next((o.get("top1_agreement") for o in entry["builds"]
                              if o["file"] == b["file"]), None)
            # A saving inside the measurement's noise is not worth an accuracy risk.
            if cost is not None and cost < current * (1.0 - MIN_SAVING) and agreement is not None \
                    and agreement >= min_agreement:
                candidates.append((current - cost, entry["id"], (b["format"], b["precision"])))
    x = x[:len(baseline[0])]  # the samples the baseline labels are of
    chosen = {}
    agreement = [1.0] * len(draft.manifest["exits"])
    for _, gid, build in sorted(candidates, reverse=True):
        trial = dict(chosen, **{gid: build})
        labels = top1_labels(draft.model(builds=trial), x)
        trial_agreement = [float((a == b).mean()) for a, b in zip(labels, baseline)]
        if min(trial_agreement) >= min_agreement:
            chosen, agreement = trial, trial_agreement
    return chosen, agreement


def exits_to_drop(table, probs=None, y=None, policy=None, exit_accuracy_drop=DEFAULT_EXIT_ACCURACY_DROP,
                  confidence=0.99):
    """``({exit index: reason}, how)`` for the early exits that do not pay for themselves.

    With labels, the exits the certified cheapest thresholds leave off; when the labels are
    too few to certify the drop, or no early exit is certified, the label-free rule below
    decides (dropping every exit for want of data would be wrong), and ``how`` says why."""
    from edgesdk.converters.calibrate import ExitSimulator, choose_thresholds
    from edgesdk.errors import CalibrationError
    n = len(table.head)
    unlabelled = "no labelled data given"
    if y is not None:
        sim = ExitSimulator(probs, y, policy, table.stage, table.head)
        try:
            point, objective = choose_thresholds(sim, max_accuracy_drop=exit_accuracy_drop,
                                                 confidence=confidence, unit=table.unit)
        except CalibrationError as e:
            point, unlabelled = None, str(e)
        if point is not None and any(t is not None for t in point.thresholds[:-1]):
            return ({k: "the cheapest thresholds certified within {} points of the final exit's "
                        "accuracy ({}% confidence) leave it off".format(
                            exit_accuracy_drop, int(confidence * 100))
                     for k in range(n - 1) if point.thresholds[k] is None},
                    {"criterion": "threshold search on labelled data", "objective": objective,
                     "expected_mean_cost": point.mean_cost, "unit": table.unit,
                     "risk": point.risk})
        if point is not None:
            unlabelled = point.risk.get("uncertifiable") or \
                "no early exit certified on the labelled data"
    drop = {}
    for k in range(n - 1):
        rest = sum(table.stage[k + 1:]) + table.head[-1]
        if table.head[k] >= rest:
            drop[k] = "its head costs {:.4g} {}, everything after it {:.4g}: it can never save " \
                      "more than it costs".format(table.head[k], table.unit, rest)
    return drop, {"criterion": "head cost >= cost of the rest ({})".format(unlabelled)}


def apply_profile(draft, db, x, y=None, device=None, metric="mean_ms", batch=1,
                  min_agreement=DEFAULT_MIN_AGREEMENT, exit_accuracy_drop=DEFAULT_EXIT_ACCURACY_DROP,
                  baseline=None, regate=None):
    """Choose builds, drop exits and gates in the :class:`~.draft.BundleDraft` ``draft`` from
    the profile store ``db``; ``regate`` (``{stage id: f(ungated block indices)}``, what
    :func:`~.stage_export.export_stages` leaves) re-exports a stage whose gates are dropped
    only in part. Returns a summary dict of the choices."""
    manifest = draft.manifest
    rows, device, sha = bundle_rows(db, manifest, device)
    costs, interpolated = build_costs(rows, metric, batch)
    times = sorted(r["measured_at"] for r in rows)
    source = {"db": db, "device": device, "conditions": rows[0]["conditions"],
              "bundle_sha256": sha, "metric": metric, "batch": batch,
              "interpolated": interpolated, "measured_at": [times[0], times[-1]]}
    if baseline is None:
        baseline = top1_labels(draft.model(), x[:FEED_LIMIT])
    chosen, agreement = choose_builds(draft, costs, x, baseline, min_agreement)
    slower = []
    for entry in graph_entries(manifest):
        builds = graph_builds(entry)
        options = {_label(b): costs.get((entry["id"], b["format"], b["precision"]))
                   for b in builds}
        fp32 = costs.get((entry["id"], "onnx", "fp32"))
        for b in builds:
            cost = options[_label(b)]
            if b["precision"] != "fp32" and fp32 and cost is not None and cost > fp32:
                slower.append("the {} build of {} measured {:.2f}x the fp32 build's {} on {} "
                              "(batch {}): it is not chosen for speed".format(
                                  _label(b), entry["id"], cost / fp32, metric, device, batch))
        pick = next((b for b in builds if (b["format"], b["precision"]) == chosen.get(entry["id"])),
                    builds[0])
        entry.update(file=pick["file"], format=pick["format"], precision=pick["precision"])
        entry["build_chosen_from"] = {
            "method": "profile", "profile": source, "costs": options, "chosen": _label(pick),
            "min_agreement": min_agreement,
            "reason": ("cheapest measured build agreeing with fp32" if entry["id"] in chosen else
                       "no other build is cheaper and agrees with fp32 well enough")}
    gates = gates_that_pay(draft, costs, x, metric, source, regate or {})
    model = draft.model()
    table = table_from_rows(rows, metric, [e["id"] for e in manifest["stages"]],
                            [e["id"] for e in manifest["exits"]], device, sha, batch, db,
                            builds={e["id"]: (e["format"], e["precision"])
                                    for e in graph_entries(manifest)})
    probs = model.exit_probabilities(x) if y is not None else None
    drop, how = exits_to_drop(table, probs, y, model.policies[0], exit_accuracy_drop)
    for k, reason in drop.items():
        ex = manifest["exits"][k]
        ex.update(dropped=True, threshold=None)
        ex["chosen_from"] = dict(how, method="dropped by profile", reason=reason, profile=source,
                                 head_cost=table.head[k])
    return {"builds": {e["id"]: _label(e) for e in graph_entries(manifest)},
            "dropped_exits": sorted(drop), "top1_agreement": agreement, "gates": gates,
            "device": device, "metric": metric, "expected": how, "slower_than_fp32": slower}


def gate_savings(costs, entry, keep):
    """``(ungated, savings)`` per sample reaching the stage of manifest entry ``entry``: the cost
    of its own graph (its selected build) and what each gate saves at its block's ``keep``
    share (see the module docstring); savings is None where the profile lacks a piece."""
    sid = entry["id"]

    def cost(name):
        return costs.get(("{}/{}".format(sid, name), "onnx", "fp32"))
    ungated = costs.get(("{}/ungated".format(sid), entry["format"], precision_of(entry)))
    blocks = entry["gated"]["blocks"]
    run = [cost("run{}".format(i)) for i in range(len(blocks))]
    skip = [cost("skip{}".format(i)) if b["skip"] else 0.0 for i, b in enumerate(blocks)]
    if ungated is None or None in [cost("entry"), cost("engine")] + run + skip:
        return ungated, None
    boundary = (cost("entry") + cost("engine") + sum(run) - ungated) / len(blocks)
    return ungated, [(1 - k) * (r - s) - boundary for k, r, s in zip(keep, run, skip)]


def gates_that_pay(draft, costs, x, metric, source, regate):
    """Drop the gates that do not pay (see the module docstring), re-exporting with
    ``regate[stage id]`` a stage that keeps some; ``{stage id: {"ungated", "gated", "keep",
    "savings", "all_gates", "dropped", "kept"}}`` for every stage with gates, costs in
    ``metric`` per sample (``gated``: the prediction with the gates kept, ``all_gates`` with
    every gate; ``dropped``: the indices of the blocks losing their gates)."""
    stages = [e for e in draft.manifest["stages"] if (e.get("gated") or {}).get("blocks")]
    if not stages:
        return {}
    model = draft.model()
    for s in model.adaptive_stages():
        s.reset_counts()
    for i in range(0, len(x), 256):   # the keep share of each block among samples reaching it
        model.run(x[i:i + 256])
    blocks = {s.id: s.blocks for s in model.adaptive_stages() if getattr(s, "blocks", None)}
    out = {}
    for entry in stages:
        keep = [b.ran / float(b.ran + b.skipped) if b.ran + b.skipped else 1.0
                for b in blocks.get(entry["id"], [])]
        ungated, savings = gate_savings(costs, entry, keep)
        index = [b.get("block", i) for i, b in enumerate(entry["gated"]["blocks"])]
        dropped = [] if savings is None else [j for j, v in zip(index, savings) if v <= 0]
        gated = None if savings is None else ungated - sum(v for v in savings if v > 0)
        out[entry["id"]] = {"ungated": ungated, "gated": gated, "keep": keep, "savings": savings,
                            "all_gates": None if savings is None else ungated - sum(savings),
                            "dropped": dropped, "kept": len(dropped) < len(index)}
        if not dropped:
            continue
        why = {"method": "dropped by profile", "profile": source, "metric": metric,
               "keep": keep, "savings": savings, "ungated": ungated,
               "reason": "gates of blocks {} predicted to save {} per sample at keep shares "
                         "{}".format(dropped, ["{:.4g}".format(v) for v in savings],
                                     ["{:.2f}".format(k) for k in keep])}
        if len(dropped) == len(index):
            entry["gated"]["dropped"] = dict(why, reason="no gate pays: " + why["reason"] +
                                             "; the stage's own graph costs {:.4g}".format(ungated))
        else:
            _regate(draft, entry, regate[entry["id"]], dropped, dict(why, predicted=gated))
    return out


def _regate(draft, entry, export, dropped, why):
    """Replace the gated pieces of stage ``entry`` in the draft by ``export(dropped)``'s."""
    old = entry["gated"]
    files = [old["entry"]["file"]] + [b[k]["file"] for b in old["blocks"] for k in ("run", "skip")
                                      if b[k]]
    for rel in files:
        os.remove(draft.path(rel))
        del draft.manifest["files"][rel]
    entry["gated"], written = export(dropped)
    entry["gated"]["dropped_gates"] = dict(why, blocks=dropped)
    draft.add_files(written)
