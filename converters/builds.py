"""Extra builds of a bundle's graphs (INT8, FP16) and how closely each follows the FP32 one.

Every stage and head keeps its FP32 ONNX graph; other builds sit beside it in the entry's
``builds`` list, the selected one named by the entry's own ``file``/``format``/``precision``.
Which build runs is chosen later from measured profiles (:mod:`.selection`); what is recorded
here is the evidence for that choice: for each extra build, the top-1 agreement with the
selected builds at every exit it influences, on the user's calibration data.
"""

import numpy as np

from edgesdk.converters.onnxruntime.quantize import quantize_graphs, to_fp16
from edgesdk.errors import BuildError, InputError
from edgesdk.manifest import graph_entries, precision_of, selected_build

FEED_LIMIT = 512  # calibration samples used for activation ranges and agreement
MIN_CALIBRATION_SAMPLES = 16


def fp32_file(entry):
    """The FP32 ONNX file of a graph entry (compilers start from it)."""
    for b in [entry] + list(entry.get("builds") or []):
        if b["format"] == "onnx" and precision_of(b) == "fp32":
            return b["file"]
    raise BuildError("graph '{}' has no FP32 ONNX build to compile".format(entry["id"]))


def exits_reached(manifest, graph_id):
    """The exits whose outputs depend on ``graph_id``: a stage's own and all later, a head's own."""
    n = len(manifest["stages"])
    for k in range(n):
        if manifest["stages"][k]["id"] == graph_id:
            return list(range(k, n))
        if manifest["exits"][k]["id"] == graph_id:
            return [k]
    raise KeyError(graph_id)


def graph_inputs(model, x, batch=256, exit_aware=False):
    """``{graph id: {input name: array}}``: what every stage and head receives for ``x``.

    ``exit_aware``: a stage (and its head) gets only the samples that reach it under the
    model's thresholds, as it will on the device."""
    from edgesdk.runtime.policies import softmax
    m = model.bundle.manifest
    out = {e["id"]: {n: [] for n in e["inputs"]} for e in graph_entries(m)}
    for i in range(0, len(x), batch):
        state = (x[i:i + batch],)
        for k in range(model.num_exits):
            if len(state[0]) == 0:
                break
            stage, head = m["stages"][k], m["exits"][k]
            for n, a in zip(stage["inputs"], state):
                out[stage["id"]][n].append(a)
            state = tuple(model.stages[k].run(state))
            for n, a in zip(head["inputs"], state):
                out[head["id"]][n].append(a)
            thr = model.thresholds[k]
            if exit_aware and thr is not None and k < model.num_exits - 1:
                left = model.policies[k].exits(softmax(model.heads[k].run(state)[0]), thr)
                state = tuple(s[~left] for s in state)
    return {g: {n: np.concatenate(parts) if parts else None for n, parts in ins.items()}
            for g, ins in out.items()}


def add_builds(draft, precisions, x=None, method="minmax", symmetric=False, exit_aware=False):
    """Add reduced-precision builds of every stage and head to the
    :class:`~.draft.BundleDraft` ``draft``: ``int8`` (quantized with calibration inputs ``x``: real, preprocessed model
    inputs) and/or ``fp16`` (weights and compute in half precision, float32 inputs and outputs
    kept so stages still chain with the runtime's float32 states). ``symmetric``: INT8
    activations as int8 with zero points 0 (TensorRT) rather than uint8. ``exit_aware``:
    calibrate each stage and head only on the samples that reach it under the bundle's
    thresholds (they must be set)."""
    manifest = draft.manifest
    new = {}
    if "int8" in precisions:
        if x is None or len(x) == 0:
            raise InputError("INT8 builds need real calibration inputs (calibration_data / "
                             "--calibration-data)")
        model = draft.model()
        if exit_aware and all(t is None for t in model.thresholds[:-1]):
            raise InputError("exit-aware calibration needs exit thresholds (threshold= / "
                             "--threshold): with every exit off each stage sees every sample")
        # Exit-aware: all the data goes in, later stages see what is left of it.
        x = np.ascontiguousarray(x if exit_aware else x[:FEED_LIMIT], dtype=np.float32)
        inputs = {g: {n: None if a is None else a[:FEED_LIMIT] for n, a in ins.items()}
                  for g, ins in graph_inputs(model, x, exit_aware=exit_aware).items()}
        jobs = []
        for entry in graph_entries(manifest):
            rel = entry["file"][:-len(".onnx")] + ".int8.onnx"
            seen = next(iter(inputs[entry["id"]].values()))
            if seen is None or len(seen) < MIN_CALIBRATION_SAMPLES:
                raise InputError("exit-aware calibration leaves {} with {} of {} samples (fewer "
                                 "than {}): the thresholds let almost every sample exit before "
                                 "it; give more data or use plain calibration".format(
                                     entry["id"], 0 if seen is None else len(seen), len(x),
                                     MIN_CALIBRATION_SAMPLES))
            jobs.append((draft.path(entry["file"]), draft.path(rel), inputs[entry["id"]], method,
                         symmetric))
            new.setdefault(entry["id"], []).append(
                {"file": rel, "format": "onnx", "precision": "int8",
                 "calibration": {"method": method, "samples": int(len(seen)),
                                 "exit_aware": bool(exit_aware)},
                 "activations": "int8 symmetric" if symmetric else "uint8"})
        quantize_graphs(jobs)
        manifest["provenance"]["passes"].append(
            {"name": "onnxruntime-quantize-static", "format": "QDQ", "weights": "int8 per-channel",
             "activations": "int8 symmetric" if symmetric else "uint8", "calibration": method,
             "samples": int(len(x))})
    if "fp16" in precisions:
        for entry in graph_entries(manifest):
            rel = entry["file"][:-len(".onnx")] + ".fp16.onnx"
            kept = to_fp16(draft.path(entry["file"]), draft.path(rel))
            build = {"file": rel, "format": "onnx", "precision": "fp16"}
            if kept:   # nodes ONNX Runtime could not type in half precision
                build["float32_nodes"] = kept
            new.setdefault(entry["id"], []).append(build)
        manifest["provenance"]["passes"].append(
            {"name": "onnxconverter-common-float16", "keep_io_types": True})
    for entry in graph_entries(manifest):
        if entry["id"] in new:
            entry["builds"] = [selected_build(entry)] + new[entry["id"]]
    draft.add_files(b["file"] for v in new.values() for b in v)


def record_providers(draft, target):
    """Give every ONNX build of the draft the board's ONNX Runtime execution providers for
    its precision (``target.onnxruntime_providers``), the runtime's default at load."""
    for entry in graph_entries(draft.manifest):
        for record in [entry] + list(entry.get("builds") or []):
            wanted = target.onnxruntime_providers.get(precision_of(record))
            if record["format"] == "onnx" and wanted:
                record["providers"] = list(wanted)


def top1_labels(model, x):
    """Top-1 class at every exit for ``x`` from the stages' own graphs (builds are compared
    there): a list of (N,) arrays."""
    return [l.argmax(axis=1) for l in model.exit_logits(x, adaptive=False)]


def record_agreement(draft, x):
    """For every build of the draft that is not selected and runs here: its top-1 agreement
    with the selected builds on ``x``, the worst over the exits it influences
    (``top1_agreement``, ``agreement_samples``, ``worst_exit``). Returns the selected builds'
    labels."""
    from edgesdk.runtime.build_select import graph_builds
    x = np.ascontiguousarray(x[:FEED_LIMIT], dtype=np.float32)
    manifest = draft.manifest
    base = top1_labels(draft.model(), x)
    agreement = {}
    for entry in graph_entries(manifest):
        # Only builds this machine runs can be compared (an aarch64 library cannot run here).
        for other in graph_builds(entry)[1:]:
            labels = top1_labels(draft.model(builds={
                entry["id"]: (other["format"], precision_of(other))}), x)
            agreement[other["file"]] = min((float((labels[k] == base[k]).mean()), k)
                                           for k in exits_reached(manifest, entry["id"]))
    # Recorded after every comparison: each one runs the draft as it was selected.
    for entry in graph_entries(manifest):
        for build in entry.get("builds") or []:
            if build["file"] in agreement:
                share, worst = agreement[build["file"]]
                build.update(top1_agreement=share, agreement_samples=int(len(x)), worst_exit=worst)
    return base
