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


def cost_table(db, manifest, metric="mean_ms", device=None, batch=1):
    """Build the cost table of the bundle described by ``manifest`` from the store at ``db``.

    Refuses, with the reason, a store without rows for this bundle's graphs (another bundle, or
    the bundle changed since profiling), another or an ambiguous device, and missing values
    (e.g. energy from a device without a power sensor).
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
    return table_from_rows([r for r in rows if r["device"] == device], metric,
                           [e["id"] for e in manifest["stages"]], [e["id"] for e in manifest["exits"]],
                           device, bundle, batch, db)


def table_from_rows(rows, metric, stage_ids, head_ids, device, bundle, batch=1, db=""):
    """A :class:`CostTable` from one device's measurement rows of one bundle."""
    rows = [r for r in rows if r["metric"] == metric
            and not (r["graph"] == "runtime" and metric.startswith("energy"))]
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
                raise ProfileStoreError("{} has no {} measurement of {} on device {}".format(
                    db or "the profile", metric, gid, device))
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
