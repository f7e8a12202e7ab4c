"""Compare builds of a bundle, or two bundles, on the same inputs, tensor by tensor.

Every stage's output tensors and every exit's logits are collected from each stage's own
graph (the selected or requested build; no gates, width variants, sparse execution or early
exits: those change which samples run what, not what a build computes). The first set of
outputs is the reference: another set passes where every value is within ``atol + rtol *
|reference|`` (numpy's ``allclose``), and an exit's top-1 agreement is reported beside it.
Outputs (with the inputs and what ran) can be saved to an ``.npz`` made on a board and
compared on the host later. Python 3.6 / numpy 1.19 compatible.
"""
import json

import numpy as np

import edgesdk
from edgesdk.errors import InputError
from edgesdk.runtime.inputs import check_batch

INPUT_KEY, ABOUT_KEY = "__input__", "__about__"   # the reserved names in an outputs file


def generated_inputs(spec, samples, seed=0):
    """``samples`` model inputs drawn for the input ``spec``: normal with the per-channel mean
    and std the conversion data had (its recorded statistics), else standard normal."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InputError("--samples must be a positive integer, got {!r}".format(samples))
    shape = [samples] + list(spec["shape"][1:])
    if any(not isinstance(d, int) or d < 1 for d in shape[1:]):
        raise InputError("the input {} has dimensions {} that are not fixed: give --data".format(
            spec["name"], spec["shape"]))
    x = np.random.RandomState(seed).standard_normal(shape)
    stats = spec.get("statistics")
    if stats and len(shape) >= 3:
        view = [1, -1] + [1] * (len(shape) - 2)
        x = x * np.asarray(stats["std"]).reshape(view) + np.asarray(stats["mean"]).reshape(view)
    return x.astype(np.float32)


def outputs_of(model, x, batch_size=64):
    """``{"GRAPH/TENSOR": array}`` in graph order: each stage's outputs and each exit's
    ``logits`` for the inputs ``x`` (run through every stage's own graph)."""
    x = check_batch(x, model.input_spec)
    m = model.bundle.manifest
    stages = model.own_graphs()
    parts = {}
    for i in range(0, len(x), batch_size):
        state = (x[i:i + batch_size],)
        for k, (stage, head) in enumerate(zip(stages, model.heads)):
            state = stage.run(state)
            for name, t in zip(m["stages"][k]["outputs"], state):
                parts.setdefault("{}/{}".format(m["stages"][k]["id"], name), []).append(
                    np.asarray(t))
            parts.setdefault("{}/logits".format(m["exits"][k]["id"]), []).append(
                np.asarray(head.run(state)[0]))
    return dict((key, np.concatenate(v)) for key, v in parts.items())


def _finite(v):
    return float(v) if np.isfinite(v) else None


def compare_tensors(reference, other, atol=1e-4, rtol=1e-3):
    """One row per tensor of ``reference`` (graph order): ``tensor``, ``graph``, ``max_abs``,
    ``mean_abs``, ``max_rel`` (over reference values above ``atol``; None where not finite), ``non_finite`` (values NaN or inf in
    ``other`` where the reference is finite), ``top1_agreement`` (exits), ``passed`` and, for
    a tensor ``other`` lacks or shapes differently, ``problem``."""
    rows = []
    for name, ref in reference.items():
        row = {"tensor": name, "graph": name.split("/", 1)[0], "max_abs": None,
               "mean_abs": None, "max_rel": None, "non_finite": 0, "top1_agreement": None,
               "passed": False}
        got = other.get(name)
        if got is None:
            row["problem"] = "missing"
        elif got.shape != ref.shape:
            row["problem"] = "shape {} against {}".format(list(got.shape), list(ref.shape))
        else:
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            diff = np.abs(got64 - ref64)
            row["non_finite"] = int((~np.isfinite(got64) & np.isfinite(ref64)).sum())
            if diff.size:
                row.update(max_abs=_finite(diff.max()), mean_abs=_finite(diff.mean()))
            # Relative to reference values above atol: beside zeros (after a ReLU) any
            # difference is "infinitely" relative, which says nothing.
            big = np.abs(ref64) > max(atol, 1e-12)
            if big.any():
                row["max_rel"] = _finite((diff[big] / np.abs(ref64[big])).max())
            row["passed"] = bool(np.allclose(got64, ref64, atol=atol, rtol=rtol))
            if name.endswith("/logits") and ref.ndim == 2 and len(ref):
                row["top1_agreement"] = float((got.argmax(axis=1) == ref.argmax(axis=1)).mean())
        rows.append(row)
    return rows


def graph_summary(rows):
    """Rows per graph (in order): the worst of its tensors, passed when all passed, and
    the first failing tensor."""
    out = {}
    for r in rows:
        g = out.setdefault(r["graph"], {"graph": r["graph"], "tensors": 0, "max_abs": None,
                                        "mean_abs": None, "max_rel": None,
                                        "top1_agreement": None, "passed": True,
                                        "first_failing": None})
        g["tensors"] += 1
        for key in ("max_abs", "mean_abs", "max_rel"):
            if r[key] is not None:
                g[key] = r[key] if g[key] is None else max(g[key], r[key])
        if r["top1_agreement"] is not None:
            g["top1_agreement"] = r["top1_agreement"]
        if not r["passed"]:
            g["passed"] = False
            g["first_failing"] = g["first_failing"] or r["tensor"]
    return list(out.values())


def save_outputs(path, outputs, x, about):
    """Write ``outputs`` with the inputs ``x`` and ``about`` (what ran: a JSON-able dict) to
    ``path`` (an ``.npz``)."""
    arrays = dict(outputs)
    arrays[INPUT_KEY] = np.asarray(x, dtype=np.float32)
    arrays[ABOUT_KEY] = np.array(json.dumps(dict(about, edgesdk=edgesdk.__version__)))
    np.savez(path, **arrays)


def load_outputs(path, max_bytes=None):
    """``(outputs, inputs, about)`` from a file :func:`save_outputs` wrote (never unpickled)."""
    from edgesdk.runtime.datafiles import NPZ_ERRORS, read_npz
    try:
        data = read_npz(path, max_bytes)
    except NPZ_ERRORS as exc:
        raise InputError("cannot read outputs file '{}': {}".format(path, exc))
    if INPUT_KEY not in data or ABOUT_KEY not in data:
        raise InputError("'{}' is not an outputs file of `edgesdk compare --save-outputs` (no "
                         "{} / {})".format(path, INPUT_KEY, ABOUT_KEY))
    try:
        about = json.loads(str(data.pop(ABOUT_KEY)))
    except ValueError as exc:
        raise InputError("'{}': its {} is not JSON: {}".format(path, ABOUT_KEY, exc))
    x = data.pop(INPUT_KEY)
    for name, a in data.items():
        if a.dtype.kind not in "fiu":
            raise InputError("'{}': tensor {} holds {} values, not numbers".format(
                path, name, a.dtype))
    if x.dtype.kind != "f":
        raise InputError("'{}': the inputs are {}, not model input (float)".format(path, x.dtype))
    return data, x, about
