"""Add per-input layer skipping (gates) and channel skipping (width variants) to a bundle's
stages; see :mod:`edgesdk.runtime.adaptive_stages` for how they run.

Each gate and variant is exported to its own ONNX graph on the state the stage takes (the
bundle's earlier stages run on ``x``), checked against PyTorch in ONNX Runtime, hashed, and
recorded on the stage entry. The bundle is rewritten in a staging copy: whole or untouched.
"""
import os

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.errors import ConversionError, InputError

ATOL, RTOL = 1e-4, 1e-3


def _stage_state(bundle, k, x):
    """The state tensors stage ``k`` receives for model inputs ``x``."""
    from edgesdk.converters.builds import graph_inputs
    from edgesdk.runtime.engine import EdgeModel
    model = EdgeModel(bundle, builds=("onnx", "fp32"))
    entry = bundle.manifest["stages"][k]
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
    bundle = bundle_io.read_bundle(bundle_path)
    k = _stage_index(bundle.manifest, stage)
    entry = bundle.manifest["stages"][k]
    state = _stage_state(bundle, k, x)
    in_shapes = [[None] + list(s.shape[1:]) for s in state]
    if in_shapes != entry["output_shapes"]:
        raise InputError("stage '{}' maps {} to {}: only a stage whose output has its input's "
                         "shapes (a residual block) can be skipped".format(
                             entry["id"], in_shapes, entry["output_shapes"]))
    rel = "gates/{}.onnx".format(entry["id"])
    with bundle_io.rewrite_bundle(bundle.root) as tmp:
        os.makedirs(os.path.join(tmp, "gates"), exist_ok=True)
        shapes = _export_checked(gate, state, entry["inputs"], ["skip_logit"],
                                 os.path.join(tmp, *rel.split("/")), "the gate of " + entry["id"])
        if shapes != [[None, 1]]:
            raise InputError("a gate returns (N, 1) skip logits, got {}".format(shapes[0]))
        record = {"file": rel, "outputs": ["skip_logit"], "output_shapes": shapes,
                  "threshold": float(threshold)}
        _record(tmp, k, "gate", record, [rel])
    return record


def add_width_variants(bundle_path, stage, variants, x, bounds, router="confidence"):
    """Give ``stage`` (index or id, not the first) narrower variants chosen per sample by a
    router: ``variants`` is ``[(width fraction, module)]`` widest first, each with the stage's
    inputs and outputs; ``bounds``: the confidence router's ascending bounds, one per variant
    (a sample whose previous exit's top probability reaches ``bounds[i]`` runs variant i+1 or
    narrower). ``x``: model inputs to export and check on. Returns the widths record."""
    from edgesdk.runtime.adaptive_stages import ROUTERS
    bundle = bundle_io.read_bundle(bundle_path)
    k = _stage_index(bundle.manifest, stage)
    entry = bundle.manifest["stages"][k]
    if k == 0:
        raise InputError("the first stage has no previous exit for a router to read")
    widths = [w for w, _ in variants]
    if not variants or any(not 0 < w < 1 for w in widths) or widths != sorted(widths, reverse=True):
        raise InputError("variants are (width fraction in (0, 1), module) pairs, widest first; "
                         "got widths {}".format(widths))
    if len(list(bounds)) != len(variants):
        raise InputError("{} router bounds for {} variants: one bound per narrower variant"
                         .format(len(list(bounds)), len(variants)))
    ROUTERS.get(router)(bounds)  # checks the name and the bounds
    state = _stage_state(bundle, k, x)
    records, files = [], []
    with bundle_io.rewrite_bundle(bundle.root) as tmp:
        for width, module in variants:
            vid = "{}.w{}".format(entry["id"], int(round(width * 100)))
            rel = "stages/{}.onnx".format(vid)
            shapes = _export_checked(module, state, entry["inputs"], entry["outputs"],
                                     os.path.join(tmp, *rel.split("/")), "variant " + vid)
            if shapes != entry["output_shapes"]:
                raise InputError("variant {} returns {}, the stage returns {}: a variant keeps "
                                 "the stage's outputs".format(vid, shapes, entry["output_shapes"]))
            records.append({"id": vid, "file": rel, "width": float(width)})
            files.append(rel)
        record = {"variants": records, "router": {"name": router, "bounds": [float(b) for b in bounds]}}
        _record(tmp, k, "widths", record, files)
    return record


def _record(tmp, k, key, record, files):
    manifest = bundle_io.read_bundle(tmp, verify=False).manifest
    entry = manifest["stages"][k]
    old = entry.get(key) or {}
    stale = [old["file"]] if "file" in old else [v["file"] for v in old.get("variants", [])]
    for rel in stale:
        if rel not in files:
            manifest["files"].pop(rel, None)
            os.remove(os.path.join(tmp, *rel.split("/")))
    entry[key] = record
    manifest["files"].update(bundle_io.hash_files(tmp, files))
    manifest["provenance"]["passes"].append({"name": "add-" + key, "stage": entry["id"]})
    bundle_io.write_manifest(tmp, manifest)
