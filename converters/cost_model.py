"""Measured costs for the cost model: per-stage and per-head latency or energy from a profile store.

The expected cost of a bundle under thresholds is sum over stages of P(sample reaches stage k)
x (cost of stage k + its head when the head runs): :class:`ExitSimulator` computes exactly that
from the tables built here. Latency tables add the runtime's own measured work per stage step
(the profiler's ``runtime`` row) to every stage. Batch sizes that were not measured are interpolated linearly in the
per-sample cost between the nearest measured sizes, and flagged.
"""
from dataclasses import dataclass, field

from edgesdk.errors import InputError
from edgesdk.profiles import ProfileStore, ProfileStoreError, graphs_sha256

METRICS = {"latency": "mean_ms", "latency-p99": "p99_ms", "energy": "energy_mj"}


@dataclass
class CostTable:
    """Per-sample cost of each stage and head (``unit``: ms or mJ) on one device."""

    metric: str
    unit: str
    stage: list
    head: list
    device: str
    bundle_sha256: str
    batch: int
    interpolated: bool
    measured_at: list = field(default_factory=list)   # [oldest, newest] row times
    db: str = ""

    def record(self):
        """What goes into the manifest's ``chosen_from``."""
        return {"db": self.db, "device": self.device, "bundle_sha256": self.bundle_sha256,
                "metric": self.metric, "batch": self.batch, "interpolated": self.interpolated,
                "measured_at": self.measured_at, "stage": self.stage, "head": self.head}


def _per_sample(points, batch, what):
    """``{batch: value per call}`` -> per-sample value at ``batch`` and whether interpolated."""
    if batch in points:
        return points[batch] / batch, False
    sizes = sorted(points)
    lo = max([b for b in sizes if b < batch], default=None)
    hi = min([b for b in sizes if b > batch], default=None)
    if lo is None or hi is None:
        raise InputError("{} was measured at batch sizes {} only; batch {} is outside that range: "
                         "profile it (edgesdk profile --batch-sizes {})".format(what, sizes, batch, batch))
    a, b = points[lo] / lo, points[hi] / hi
    return a + (b - a) * (batch - lo) / float(hi - lo), True


def device_rows(db, manifest, device=None):
    """``(rows, device, bundle sha256)``: the store's measurements of this bundle's graphs on
    one device.

    Refuses, with the reason, a store without rows for this bundle's graphs (another bundle, or
    the bundle changed since profiling) and another or an ambiguous device.
    """
    bundle = graphs_sha256(manifest)
    with ProfileStore(db, create=False) as store:
        rows = store.rows(bundle_sha256=bundle)
        if not rows:
            others = sorted({r["bundle_sha256"][:12] for r in store.rows()})
            raise ProfileStoreError(
                "{} has no measurements of this bundle's graphs (sha256 {}); it holds bundles {}. "
                "The bundle was changed or converted again since it was profiled: profile it "
                "again (edgesdk profile BUNDLE --db {})".format(db, bundle[:12], others or "none", db))
    devices = sorted({r["device"] for r in rows})
    if device is None:
        if len(devices) > 1:
            raise InputError("{} has measurements of this bundle from several devices {}; choose "
                             "one with --device".format(db, devices))
        device = devices[0]
    elif device not in devices:
        raise ProfileStoreError("{} has no measurements of this bundle from device {}; it has {}"
                                .format(db, device, devices))
    return [r for r in rows if r["device"] == device], device, bundle


def cost_table(db, manifest, metric="mean_ms", device=None, batch=1):
    """Build the cost table of the bundle described by ``manifest`` (its selected builds)
    from the store at ``db``; see :func:`device_rows` for what is refused, and missing values
    (e.g. energy from a device without a power sensor) are refused too."""
    rows, device, bundle = device_rows(db, manifest, device)
    return table_from_rows(rows, metric, [e["id"] for e in manifest["stages"]],
                           [e["id"] for e in manifest["exits"]], device, bundle, batch, db,
                           builds=selected_builds(manifest))


def build_costs(rows, metric, batch=1):
    """``{(graph, format, precision): per-sample cost}`` of every measured build at ``batch``,
    and whether any value was interpolated."""
    points = {}
    for r in rows:
        if r["metric"] == metric and r["value"] is not None and r["graph"] != "runtime":
            points.setdefault((r["graph"], r["build"], r["precision"]), {})[r["batch"]] = r["value"]
    out, interpolated = {}, False
    for key, values in points.items():
        out[key], interp = _per_sample(values, batch, "{} ({} {})".format(*key))
        interpolated = interpolated or interp
    return out, interpolated


def selected_builds(manifest):
    """``{graph id: (format, precision)}`` of the builds the manifest selects."""
    return {e["id"]: (e["format"], e.get("precision", "fp32"))
            for e in manifest["stages"] + manifest["exits"]}


def _one_build(rows, builds):
    """Keep each graph's rows of one build: ``builds[graph]``, or fp32 where several were
    measured and no selection is given (reports read stores without the manifest)."""
    measured = {}
    for r in rows:
        measured.setdefault(r["graph"], set()).add((r["build"], r["precision"]))
    keep = {}
    for graph, options in measured.items():
        if builds and graph in builds:
            keep[graph] = builds[graph]
        elif len(options) == 1:
            keep[graph] = next(iter(options))
        else:
            keep[graph] = min(options, key=lambda o: (o[1] != "fp32", o))
    return [r for r in rows if (r["build"], r["precision"]) == keep[r["graph"]]]


def table_from_rows(rows, metric, stage_ids, head_ids, device, bundle, batch=1, db="", builds=None):
    """A :class:`CostTable` from one device's measurement rows of one bundle.

    ``builds`` (``{graph id: (format, precision)}``) says which build's rows to use for each
    graph (see :func:`_one_build` without it).
    """
    rows = _one_build([r for r in rows if r["metric"] == metric
                       and not (r["graph"] == "runtime" and metric.startswith("energy"))], builds)
    values, times = {}, []
    for r in rows:
        if r["value"] is None:
            raise ProfileStoreError(
                "{} of {} at batch {} was not measured on device {} (sensor: {}); {}".format(
                    metric, r["graph"], r["batch"], device, r["sensor"],
                    "no power sensor there: energy budgets need a board with one"
                    if metric == "energy_mj" else "profile again"))
        values.setdefault(r["graph"], {})[r["batch"]] = r["value"]
        times.append(r["measured_at"])
    interpolated = False
    tables = {"stage": [], "head": []}
    for kind, ids in (("stage", stage_ids), ("head", head_ids)):
        for gid in ids:
            if gid not in values:
                raise ProfileStoreError("{} has no {} measurement of {}{} on device {}".format(
                    db or "the profile", metric, gid,
                    " ({} {})".format(*builds[gid]) if builds and gid in builds else "", device))
            v, interp = _per_sample(values[gid], batch, gid)
            interpolated = interpolated or interp
            tables[kind].append(v)
    if "runtime" in values:
        step, interp = _per_sample(values["runtime"], batch, "the runtime's own work")
        tables["stage"] = [v + step for v in tables["stage"]]
        interpolated = interpolated or interp
    unit = "mJ" if metric.startswith("energy") else "ms"
    return CostTable(metric, unit, tables["stage"], tables["head"], device, bundle, batch,
                     interpolated, [min(times), max(times)] if times else [], db)
