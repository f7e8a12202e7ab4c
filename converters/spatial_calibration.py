"""A masked block's keep threshold chosen under a latency budget, from what the profiler
measured on the device.

The profiler times each masked block at several active fractions (``STAGE/active0`` ...
``STAGE/active100``: masker, gather, patch graph and scatter on a random pattern of regions;
:func:`edgesdk.runtime.profiler.spatial_rows`). :func:`spatial_cost` interpolates between
them: the block's latency predictor, a function of the active fraction at the block's own
granularity. :func:`calibrate_spatial` runs the bundle on real inputs at each threshold of a
fixed path, measures each block's active fraction there, predicts the whole model's latency
with exits off, and keeps the lowest threshold (the most regions computed) within budget.
"""
import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.errors import CalibrationError, InputError, ProfileStoreError
from edgesdk.converters.adaptive_stages import CALIBRATION_BATCH
from edgesdk.manifest import precision_of

# Keep thresholds tried, most regions computed first (fixed before any data is seen).
SPATIAL_PATH = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def spatial_cost(costs, sid, fraction):
    """Predicted cost per sample of masked stage ``sid`` with ``fraction`` of its regions
    active: linear between the profile's measured fractions (``costs`` from
    :func:`~.cost_model.build_costs`); None without at least two of them."""
    prefix = sid + "/active"
    points = sorted((int(key[0][len(prefix):]) / 100.0, value) for key, value in costs.items()
                    if key[0].startswith(prefix) and key[0][len(prefix):].isdigit())
    if len(points) < 2:
        return None
    xs, ys = zip(*points)
    return float(np.interp(fraction, xs, ys))


def calibrate_spatial(bundle_path, x, budget_ms, db, y=None, device=None, metric="mean_ms",
                      batch=1, path=SPATIAL_PATH, threads=None):
    """Set every masked block's keep threshold to the lowest of ``path`` whose predicted
    latency per sample of the whole model with exits off (the other stages and the final
    head as profiled in ``db``, each masked block at the active fraction it has on the model
    inputs ``x`` at that threshold) is within ``budget_ms``, and record how (``chosen_from``
    on each block: the budget, the profile, every threshold's prediction, active fractions
    and, with labels ``y``, accuracy against every region computed). Raises
    :class:`CalibrationError` when no threshold fits (the bundle is then unchanged).
    Returns that record."""
    from edgesdk.converters.cost_model import build_costs
    from edgesdk.costs import bundle_rows
    from edgesdk.runtime.engine import load_bundle
    if not (isinstance(budget_ms, (int, float)) and budget_ms > 0 and np.isfinite(budget_ms)):
        raise InputError("budget_ms must be a positive number of milliseconds, got {!r}".format(
            budget_ms))
    path = [float(t) for t in path]
    if not path or any(not 0 < t < 1 for t in path) or path != sorted(path):
        raise InputError("a spatial path is keep thresholds in (0, 1), ascending; got {}".format(
            path))
    model = load_bundle(bundle_path, threads=threads)
    stages = model.spatial_stages()
    if not stages:
        raise InputError("{} has no masked blocks (MaskedBlock stages)".format(bundle_path))
    m = model.bundle.manifest
    rows, device, sha = bundle_rows(db, m, device)
    costs, _ = build_costs(rows, metric, batch)
    masked = {s.id for s in stages}
    fixed = [e for e in m["stages"] if e["id"] not in masked] + [m["exits"][-1]]
    missing = [e["id"] for e in fixed if (e["id"], e["format"], precision_of(e)) not in costs]
    missing += [s.id + "/active*" for s in stages if spatial_cost(costs, s.id, 0.5) is None]
    if missing:
        raise ProfileStoreError("{} has no {} at batch {} of {} on device {}: profile the bundle "
                                "there (edgesdk profile)".format(db, metric, batch,
                                                                 ", ".join(missing), device))
    rest = sum(costs[(e["id"], e["format"], precision_of(e))] for e in fixed)
    y = None if y is None else np.asarray(y)

    def final_labels():
        # Small batches: ONNX Runtime's arenas keep the largest batch a session ran.
        return model.exit_logits(x, batch_size=CALIBRATION_BATCH)[-1].argmax(axis=1)
    for s in stages:
        s.enabled = False
    dense = final_labels() if y is not None else None
    for s in stages:
        s.enabled = True
    tried, chosen = [], None
    for t in path:
        for s in stages:
            s.threshold, s.active, s.regions = t, 0, 0
        labels = final_labels()
        active = {s.id: s.active / float(max(s.regions, 1)) for s in stages}
        predicted = rest + sum(spatial_cost(costs, sid, f) for sid, f in active.items())
        tried.append({"threshold": t, "predicted_ms": predicted,
                      "active_fraction": active,
                      "accuracy": None if y is None else float((labels == y).mean())})
        if chosen is None and predicted <= budget_ms:
            chosen = tried[-1]
    if chosen is None:
        raise CalibrationError(
            "no keep threshold fits {:g} ms per sample: the cheapest, {:g}, is predicted at "
            "{:.4g} ms ({} of it outside the masked blocks); the bundle is unchanged".format(
                budget_ms, path[-1], tried[-1]["predicted_ms"], "{:.4g} ms".format(rest)))
    record = {"method": "calibrate-spatial", "budget_ms": budget_ms, "metric": metric,
              "batch": batch, "profile": {"db": db, "device": device, "bundle_sha256": sha},
              "data": {"samples": int(len(x)), "labelled": y is not None},
              "accuracy_every_region": None if dense is None else float((dense == y).mean()),
              "chosen": chosen, "tried": tried}

    def change(manifest):
        for entry in manifest["stages"]:
            if entry["id"] in masked:
                entry["spatial"].update(threshold=chosen["threshold"], chosen_from=record)
    bundle_io.update_manifest(model.bundle.root, change)
    return record
