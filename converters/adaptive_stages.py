"""Add per-input layer skipping (gates) and channel skipping (width variants) to a bundle's
stages; see :mod:`edgesdk.runtime.adaptive_stages` for how they run.

Each gate and variant is exported to its own ONNX graph on the state the stage takes (the
bundle's earlier stages run on ``x``), checked against PyTorch in ONNX Runtime, hashed, and
recorded on the stage entry. The bundle is rewritten in a staging copy: whole or untouched.

Gate thresholds: :func:`add_gate` writes the one it is given (recorded as uncalibrated);
:func:`calibrate_gates` chooses them on labelled data with the exact bound and fixed-sequence
test of :mod:`~edgesdk.converters.risk`: one common skip threshold for every gate along a
path fixed in advance (``GATE_PATH``, 0.999 down to 0.5), tested in order against the accuracy
of the same bundle with its gates off; the certified threshold that skips the most MACs wins.
"""
import os

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.converters.draft import edit_bundle
from edgesdk.errors import CalibrationError, ConversionError, InputError

ATOL, RTOL = 1e-4, 1e-3
# Common skip thresholds, most conservative first: fixed before any data is seen, so the
# order of the fixed-sequence test cannot depend on the losses it tests.
GATE_PATH = (0.999, 0.995, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def _stage_state(draft, k, x):
    """The state tensors stage ``k`` of the draft receives for model inputs ``x``."""
    from edgesdk.converters.builds import graph_inputs
    model = draft.model(builds=("onnx", "fp32"))
    entry = draft.manifest["stages"][k]
    feeds = graph_inputs(model, np.asarray(x, dtype=np.float32))[entry["id"]]
    return [feeds[n] for n in entry["inputs"]]


def _export_checked(module, state, inputs, outputs, dest, what):
    """Export ``module`` on ``state`` to ``dest``, check it in ONNX Runtime against PyTorch;
    returns the output shapes (batch dimension null)."""
    import torch
    from edgesdk.converters.onnx_export import DEFAULT_OPSET, export_graph
    from edgesdk.runtime.executors.ort import make_session
    args = [torch.from_numpy(s) for s in state]
    model = export_graph(module.eval(), args, inputs, outputs, DEFAULT_OPSET, what)
    with torch.no_grad():
        want = module(*args)
    want = [w.numpy() for w in (want if isinstance(want, (tuple, list)) else [want])]
    got = make_session(model.SerializeToString()).run(outputs, dict(zip(inputs, state)))
    for w, g in zip(want, got):
        if w.shape != g.shape or not np.allclose(g, w, atol=ATOL, rtol=RTOL):
            raise ConversionError("ONNX Runtime disagrees with PyTorch on {} (max abs error "
                                  "{:.3g})".format(what, float(np.abs(g - w).max())
                                                   if w.shape == g.shape else float("inf")))
    import onnx
    onnx.save(model, dest)
    return [[None] + list(w.shape[1:]) for w in want]


def _stage_index(manifest, stage):
    ids = [e["id"] for e in manifest["stages"]]
    if isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage < len(ids):
        return stage
    if stage in ids:
        return ids.index(stage)
    raise InputError("no stage {!r}; stages: {}".format(stage, ", ".join(ids)))


def add_gate(bundle_path, stage, gate, x, threshold=0.5):
    """Let each sample skip ``stage`` (index or id) when ``sigmoid(gate(state)) >=
    threshold``. ``gate``: a module taking the stage's input state and returning ``(N, 1)``
    skip logits; the stage must return a state of its input's shapes (a residual block).
    ``x``: model inputs to export and check on. Returns the gate record."""
    if not 0 <= threshold <= 1:
        raise InputError("a gate threshold is a skip probability in [0, 1], got {}".format(threshold))
    with edit_bundle(bundle_path) as draft:
        k = _stage_index(draft.manifest, stage)
        entry = draft.manifest["stages"][k]
        state = _stage_state(draft, k, x)
        in_shapes = [[None] + list(s.shape[1:]) for s in state]
        if in_shapes != entry["output_shapes"]:
            raise InputError("stage '{}' maps {} to {}: only a stage whose output has its input's "
                             "shapes (a residual block) can be skipped".format(
                                 entry["id"], in_shapes, entry["output_shapes"]))
        rel = "gates/{}.onnx".format(entry["id"])
        os.makedirs(draft.path("gates"), exist_ok=True)
        shapes = _export_checked(gate, state, entry["inputs"], ["skip_logit"], draft.path(rel),
                                 "the gate of " + entry["id"])
        if shapes != [[None, 1]]:
            raise InputError("a gate returns (N, 1) skip logits, got {}".format(shapes[0]))
        record = {"file": rel, "outputs": ["skip_logit"], "output_shapes": shapes,
                  "threshold": float(threshold),
                  "chosen_from": {"method": "given to add_gate (uncalibrated)"}}
        _record(draft, k, "gate", record, [rel])
    return record


# Samples per call when running calibration data: ONNX Runtime's arenas grow to the largest
# batch a session ran, and keep it.
CALIBRATION_BATCH = 64


def _labels(model, x, batch=CALIBRATION_BATCH):
    """The label of every sample of ``x`` as ``model.run`` answers, in batches."""
    return np.concatenate([model.run(x[i:i + batch]).labels for i in range(0, len(x), batch)])


class _GateRun(object):
    """One common gate threshold's outcome on the calibration data."""

    def __init__(self, losses, gains, accuracy, skipped, macs_skipped):
        self.losses, self.gains, self.accuracy = losses, gains, accuracy
        self.skipped, self.macs_skipped = skipped, macs_skipped


def calibrate_gates(bundle_path, x, y, max_accuracy_drop, confidence=0.99, path=GATE_PATH,
                    threads=None):
    """Choose the skip threshold of every gate in the bundle on labelled model inputs ``(x,
    y)`` and write it with its ``chosen_from`` record (objective, data, the exact bound of
    the accuracy drop, ``n``, the confidence, the method, what is expected).

    The drop is measured against the same bundle with its gates off (its early exits as
    they are); it is certified to stay within ``max_accuracy_drop`` points with probability
    ``confidence`` (0: point estimates, no guarantee). ``path``: the common thresholds to
    test, most conservative first. Raises :class:`CalibrationError` when this many samples
    cannot certify the target, or when not even the first threshold is certified (the
    bundle is then left as it was). Returns ``{"thresholds": {gate id: threshold},
    "chosen_from": record}``."""
    from edgesdk.converters import risk
    from edgesdk.converters.calibrate import _check_data
    from edgesdk.profiles import dataset_sha256
    from edgesdk.runtime.engine import load_bundle
    risk.check_confidence(confidence)
    if not 0 <= max_accuracy_drop <= 100:
        raise InputError("max_accuracy_drop is in percentage points, 0..100; got {}".format(
            max_accuracy_drop))
    path = [float(t) for t in path]
    if not path or any(not 0 <= t <= 1 for t in path) or path != sorted(path, reverse=True):
        raise InputError("a gate path is skip thresholds in [0, 1], most conservative "
                         "(highest) first; got {}".format(path))
    model = load_bundle(bundle_path, threads=threads)
    y = _check_data(x, y, model.num_classes)
    gated = [s for s in model.adaptive_stages() if getattr(s, "gate", None) is not None or
             getattr(s, "blocks", None)]
    if not gated:
        raise InputError("{} has no gates: add them with add_gate, or convert a model with "
                         "GatedBlock stages".format(bundle_path))
    n, allowed = len(y), max_accuracy_drop / 100.0
    risk.require_certifiable(allowed, n, confidence, "gate calibration")
    manifest = model.bundle.manifest
    macs = {e["id"]: e["macs"] for e in manifest["stages"]}
    full = float(sum(macs.values()) + manifest["exits"][-1]["macs"])
    for s in model.adaptive_stages():
        s.enabled = False
    reference = _labels(model, x) == y
    for s in model.adaptive_stages():
        s.enabled = True

    def evaluate(threshold):
        for s in gated:
            s.threshold = threshold
            s.reset_counts()
        right = _labels(model, x) == y
        skipped = {gid: c / float(n) for s in gated for gid, c in s.skip_counts().items()}
        return _GateRun(int((reference & ~right).sum()), int((right & ~reference).sum()),
                        float(right.mean()), skipped,
                        sum(s.macs_skipped(macs[s.id]) for s in gated) / (n * full))
    good, tested, stop = risk.fixed_sequence(path, evaluate, n, allowed, confidence)
    if not good:
        t, r = stop if stop is not None else (path[0], evaluate(path[0]))
        raise CalibrationError(
            "no gate threshold is certified within {:g} points: at the most conservative, "
            "{:g}, {} of {} samples the ungated bundle gets right are lost (exact bound {:.3g} "
            "points at confidence {:g}); the bundle is unchanged. Allow a larger drop, give "
            "more data or train the gates to skip less".format(
                max_accuracy_drop, t, r.losses, n,
                100.0 * risk.clopper_pearson_upper(r.losses, n, 1.0 - confidence)
                if confidence > 0 else 100.0 * (r.losses - r.gains) / n, confidence))
    threshold, best = max(good, key=lambda g: (g[1].macs_skipped, g[1].accuracy))
    record = {"method": "calibrate-gates",
              "objective": {"kind": "most-skipped-within-accuracy-drop",
                            "max_accuracy_drop_points": max_accuracy_drop,
                            "confidence": confidence},
              "data": {"samples": n, "sha256": dataset_sha256(x, y)},
              "risk": risk.risk_record(best.losses, best.gains, n, confidence,
                                       path="common skip threshold {}".format(path),
                                       settings_tested=tested, settings_certified=len(good)),
              "expected": {"accuracy": best.accuracy, "ungated_accuracy": float(reference.mean()),
                           "skipped_fraction": best.skipped,
                           "macs_skipped_fraction": best.macs_skipped}}

    def change(m):
        for entry in m["stages"]:
            fused = entry.get("gated") or {}
            blocks = [] if fused.get("dropped") else fused.get("blocks", [])
            for gate in ([entry["gate"]] if entry.get("gate") is not None else []) + blocks:
                gate.update(threshold=threshold, chosen_from=record)
    bundle_io.update_manifest(model.bundle.root, change)
    return {"thresholds": {g: threshold for s in gated for g in s.skip_counts()},
            "chosen_from": record}


def add_width_variants(bundle_path, stage, variants, x, bounds=None, router="confidence",
                       skip=False):
    """Give ``stage`` (index or id) narrower variants chosen per sample by a router:
    ``variants`` is ``[(width fraction, module)]`` widest first, each with the stage's inputs
    and outputs. ``x``: model inputs to export and check on. Returns the widths record.

    ``router``: a name, ``"confidence"``, with ``bounds`` ascending, one per narrower variant
    (a sample whose previous exit's top probability reaches ``bounds[i]`` runs variant i+1 or
    narrower; not on the first stage); or a learned router, an ``nn.Module`` taking the stage's
    inputs and returning ``(N, len(variants) + 1)`` scores, widest first (each sample runs its
    highest), with ``skip`` one more score for skipping the stage (stages that keep shapes)."""
    from edgesdk.runtime.adaptive_stages import ROUTERS
    widths = [w for w, _ in variants]
    if not variants or any(not 0 < w < 1 for w in widths) or widths != sorted(widths, reverse=True):
        raise InputError("variants are (width fraction in (0, 1), module) pairs, widest first; "
                         "got widths {}".format(widths))
    learned = not isinstance(router, str)
    if learned:
        if bounds is not None:
            raise InputError("a learned router chooses by its scores: give no bounds")
    elif bounds is None or len(list(bounds)) != len(variants):
        raise InputError("{} router bounds for {} variants: one bound per narrower variant"
                         .format(len(list(bounds or [])), len(variants)))
    else:
        ROUTERS.get(router)(bounds)  # checks the name and the bounds
    records, files = [], []
    with edit_bundle(bundle_path) as draft:
        k = _stage_index(draft.manifest, stage)
        entry = draft.manifest["stages"][k]
        if k == 0 and not learned:
            raise InputError("the first stage has no previous exit for a router to read")
        state = _stage_state(draft, k, x)
        for width, module in variants:
            vid = "{}.w{}".format(entry["id"], int(round(width * 100)))
            rel = "stages/{}.onnx".format(vid)
            shapes = _export_checked(module, state, entry["inputs"], entry["outputs"],
                                     draft.path(rel), "variant " + vid)
            if shapes != entry["output_shapes"]:
                raise InputError("variant {} returns {}, the stage returns {}: a variant keeps "
                                 "the stage's outputs".format(vid, shapes, entry["output_shapes"]))
            records.append({"id": vid, "file": rel, "width": float(width)})
            files.append(rel)
        if learned:
            spec = _learned_router(draft, entry, router, state, len(variants) + 1, skip)
            files.append(spec["file"])
        else:
            spec = {"name": router, "bounds": [float(b) for b in bounds]}
        record = {"variants": records, "router": spec}
        _record(draft, k, "widths", record, files)
    return record


def _learned_router(draft, entry, module, state, variants, skip):
    """Export a learned router of stage ``entry`` and check its scores' shape; its record."""
    from edgesdk.runtime.adaptive_stages import GRAPH_ROUTER
    if skip and entry["output_shapes"] != [[None] + list(s.shape[1:]) for s in state]:
        raise InputError("stage {} changes the shape of its state, so a sample cannot skip it: "
                         "skip=True needs a stage whose outputs match its inputs".format(
                             entry["id"]))
    rel = "stages/{}.router.onnx".format(entry["id"])
    shapes = _export_checked(module, state, entry["inputs"], ["route"], draft.path(rel),
                             "the router of " + entry["id"])
    want = variants + (1 if skip else 0)
    if shapes != [[None, want]]:
        raise InputError("the router of {} returns {}, expected one tensor of [N, {}]: a score "
                         "per variant, widest first{}".format(
                             entry["id"], shapes, want, ", then one for skipping" if skip else ""))
    return {"name": GRAPH_ROUTER, "file": rel, "skip": bool(skip)}


def _record(draft, k, key, record, files):
    """Put ``record`` on stage ``k`` as ``key``, replacing (and deleting) an older one's files."""
    manifest = draft.manifest
    entry = manifest["stages"][k]
    old = entry.get(key) or {}
    stale = [old["file"]] if "file" in old else [v["file"] for v in old.get("variants", [])]
    stale += [old["router"]["file"]] if "file" in old.get("router", {}) else []
    for rel in stale:
        if rel not in files:
            manifest["files"].pop(rel, None)
            os.remove(draft.path(rel))
    entry[key] = record
    draft.add_files(files)
    manifest["provenance"]["passes"].append({"name": "add-" + key, "stage": entry["id"]})
