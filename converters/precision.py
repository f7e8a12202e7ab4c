"""Which precisions a conversion builds and which it selects, under the target's rules.

Every graph always keeps its FP32 ONNX build (the portable one, from which device toolchains
rebuild). ``quantize`` selects one precision for every graph; without it the target's
default applies (FP16 on the TX2, INT8 on Snapdragon), falling back to FP32 where that needs
calibration data nobody gave. Asking for a precision the board runs slowly warns. INT8 graphs
follow the target's scheme (uint8 activations, or int8 with every zero point 0 for TensorRT)
and are checked against its rules after quantizing. With a profile the measured table
chooses per graph instead (:mod:`.selection`). Everything decided is recorded in the
manifest's ``quantization``.
"""
import logging
from dataclasses import dataclass, field

import numpy as np

from edgesdk.manifest import graph_entries
from edgesdk.errors import ConversionError, InputError

log = logging.getLogger(__name__)
NEEDS_DATA = ("int8",)


@dataclass
class PrecisionPlan:
    """The builds to write (FP32 first), the precision to select, and why."""

    precisions: list
    select: str
    rules: dict
    warnings: list = field(default_factory=list)
    source: str = "edgesdk conversion"


def plan_precisions(target, precisions=None, quantize=None, have_data=False, profile=None):
    """A :class:`PrecisionPlan` for ``target``; refuses precisions the board cannot run."""
    requested = list(dict.fromkeys(list(precisions or []) + ([quantize] if quantize else [])))
    wanted = list(requested)
    warnings = []
    select = quantize
    if select is None and profile is None:
        select = target.default_precision
        if select in NEEDS_DATA and not have_data:
            warnings.append("target '{}' runs {} by default, which needs calibration data; none "
                            "was given, so fp32 is selected".format(target.name, select))
            select = "fp32"
        wanted.append(select)
    precisions = ["fp32"] + [p for p in dict.fromkeys(wanted) if p != "fp32"]
    bad = [p for p in precisions if p not in target.precisions]
    if bad:
        raise InputError("target '{}' runs precisions {}; {} requested".format(
            target.name, ", ".join(target.precisions), ", ".join(bad)))
    for p in requested:
        if p in target.slow_precisions:
            warnings.append("{} on {}: {}".format(p, target.name, target.slow_precisions[p]))
    for w in warnings:
        log.warning(w)
    return PrecisionPlan(precisions, select or "fp32", target.precision_rules(), warnings)


def check_calibration(data, plan, profile):
    """``(x, y or None)`` as float32 / int64 arrays, or ``(None, None)`` when not needed."""
    if data is None:
        needs = [p for p in plan.precisions if p in NEEDS_DATA]
        if needs:
            raise InputError("{} builds need real calibration data (calibration_data= / "
                             "--calibration-data) for their activation ranges".format(
                                 ", ".join(needs)))
        if profile is not None:
            raise InputError("choosing from a profile needs the calibration data the profiled "
                             "bundle was converted with (calibration_data= / --calibration-data)")
        return None, None
    x, y = data if isinstance(data, tuple) else (data, None)
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim < 2 or len(x) == 0 or not np.isfinite(x).all():
        raise InputError("calibration data must be finite float model inputs with a batch "
                         "dimension, got {} {}".format(x.dtype, list(x.shape)))
    if len(x) < 16:
        raise InputError("calibration data has {} samples; at least 16 are needed for "
                         "activation ranges and agreement checks".format(len(x)))
    x = np.ascontiguousarray(x, dtype=np.float32)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise InputError("calibration labels must be a 1-D integer array with one label per "
                             "input; got shape {} dtype {}".format(list(y.shape), y.dtype))
        y = y.astype(np.int64)
    return x, y


def check_int8_rules(draft, target):
    """Refuse INT8 builds of the draft that break the target's rules (all violations at once)."""
    from edgesdk.converters.onnxruntime.quantize import int8_rule_violations
    bad = []
    for entry in graph_entries(draft.manifest):
        for b in entry.get("builds") or []:
            if b["precision"] == "int8":
                bad += ["{}: {}".format(entry["id"], v) for v in int8_rule_violations(
                    draft.path(b["file"]), target.int8_activations == "int8-symmetric",
                    target.int8_no_bool)]
    if bad:
        raise ConversionError("INT8 builds break the rules of target '{}':\n  {}".format(
            target.name, "\n  ".join(bad)))


def select_precision(draft, plan, per_graph=False):
    """Select ``plan.select`` for every graph of the draft (unless ``per_graph``: a profile
    chose already) and record the plan in the manifest's ``quantization``."""
    manifest = draft.manifest
    if not per_graph:
        for entry in graph_entries(manifest):
            for b in entry.get("builds") or []:
                if b["precision"] == plan.select:
                    entry.update(file=b["file"], format=b["format"], precision=b["precision"])
    selected = "per graph, from the profile" if per_graph else plan.select
    manifest["quantization"] = {"builds": plan.precisions, "selected": selected,
                                "source": plan.source, "rules": plan.rules,
                                "warnings": plan.warnings}


def exit_agreement_table(draft, x, y=None, max_accuracy_drop=0.5):
    """Per exit: accuracy of the FP32 builds and of the selected builds on ``(x, y)``, and
    their top-1 agreement; with labels, a last row for early exit with thresholds calibrated
    afresh for each (``max_accuracy_drop`` points at 99%, or the smallest drop the labelled
    samples can certify if that is larger): accuracy and mean cost as a fraction of the full
    model's MACs. A list of dicts (the table convert prints)."""
    from edgesdk.converters.calibrate import choose_thresholds, simulator_for
    models = {"fp32": draft.model(builds="fp32"), "selected": draft.model()}
    # Builds are compared on the stages' own graphs (gated pieces run fp32 ONNX whatever
    # the stage's build).
    probs = {k: m.exit_probabilities(x, adaptive=False) for k, m in models.items()}
    rows = []
    for k, (a, b) in enumerate(zip(*(
            [p.argmax(1) for p in probs[name]] for name in ("fp32", "selected")))):
        rows.append({"exit": k, "agreement": float((a == b).mean()),
                     "accuracy_fp32": float((a == y).mean()) if y is not None else None,
                     "accuracy_selected": float((b == y).mean()) if y is not None else None})
    if y is not None:
        import math
        from edgesdk.converters.risk import smallest_certifiable
        # A target these samples cannot certify would show the full model: take the smallest
        # they can (in tenths of a point), and say which in the row's name.
        drop = max(max_accuracy_drop, math.ceil(1000 * smallest_certifiable(len(y), 0.99)) / 10)
        row = {"exit": "early exit (recalibrated, within {:g} points at 99%)".format(drop),
               "agreement": None, "max_accuracy_drop": drop}
        for name, m in models.items():
            sim = simulator_for(m, probs[name], y)
            point, _ = choose_thresholds(sim, max_accuracy_drop=drop, confidence=0.99)
            row["accuracy_" + name] = point.accuracy
            row["cost_" + name] = point.mean_cost / sim.full_cost
        rows.append(row)
    return rows
