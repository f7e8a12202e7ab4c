"""Cost tables read from a profile store: what the runtime's deadlines and budgets and the
converters' cost model (calibration budgets, build choice, reports) both predict from.

One reader, one device rule (:func:`bundle_rows`), one table (:class:`CostTable`): the
per-sample cost of each stage and head of a bundle's selected builds on one device, with the
engine's own measured work (the profiler's runtime rows, ``runtime/timing.py``) added where a
real run pays it: per stage step to every stage, per early head run to every early head, the
final head's to the final head, once per call to stage 0 (every sample reaches it). Batch
sizes that were not measured are interpolated linearly in the per-sample cost between the
nearest measured sizes, and flagged. Python 3.6 compatible (the runtime reads it on boards).
"""
from edgesdk.errors import InputError, ProfileStoreError
from edgesdk.manifest import graph_entries, precision_of
from edgesdk.profiles import ProfileStore, device_fingerprint, graphs_sha256

# The engine's own rows (runtime/profiler.py RUNTIME_ROWS): graph name -> where it is added.
ENGINE_ROWS = {"runtime-call": "call", "runtime": "stage", "runtime-head": "head",
               "runtime-final": "final"}


def is_engine_row(graph):
    """Whether a row is the engine's own work rather than a graph's."""
    return graph in ENGINE_ROWS


class CostTable(object):
    """Per-sample cost of each stage and head (``unit``: ms or mJ) on one device.

    ``stage``/``head`` include the engine's own work (``engine``: ``{"call", "stage", "head",
    "final"}`` per sample, 0 where the profile has no such row); ``graph_stage``/``graph_head``
    are the graphs' costs alone. ``noisy``: graphs whose profile spread p90/p50 > 1.5.
    """

    def __init__(self, metric, unit, stage, head, device, bundle_sha256, batch, interpolated,
                 measured_at=None, db="", engine=None, noisy=None, graph_stage=None,
                 graph_head=None):
        self.metric, self.unit, self.device, self.db = metric, unit, device, db
        self.stage, self.head = list(stage), list(head)
        self.bundle_sha256, self.batch, self.interpolated = bundle_sha256, batch, interpolated
        self.measured_at = list(measured_at or [])
        self.engine = dict(engine) if engine else dict.fromkeys(ENGINE_ROWS.values(), 0.0)
        self.noisy = list(noisy or [])
        self.graph_stage = list(self.stage if graph_stage is None else graph_stage)
        self.graph_head = list(self.head if graph_head is None else graph_head)

    def describe(self):
        """One line: which statistic and what it includes (for ``chosen_from.cost_model``)."""
        if self.unit != "ms":
            return "measured {} per stage and head".format(self.metric)
        return ("measured {} per stage and head, plus the engine's own work ({:.4g} ms per "
                "call, {:.4g} per stage step, {:.4g} per early head, {:.4g} for the final "
                "head)".format(self.metric, self.engine["call"], self.engine["stage"],
                               self.engine["head"], self.engine["final"]))

    def record(self):
        """What goes into the manifest's ``chosen_from``: ``statistic`` names the per-graph
        statistic the costs are (the metric), ``engine`` the runtime's share included."""
        return {"db": self.db, "device": self.device, "bundle_sha256": self.bundle_sha256,
                "metric": self.metric, "statistic": self.metric, "batch": self.batch,
                "interpolated": self.interpolated, "measured_at": self.measured_at,
                "stage": self.stage, "head": self.head, "engine": dict(self.engine),
                "noisy": list(self.noisy)}


def per_sample(points, batch, what):
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


def bundle_rows(db, manifest, device=None, conditions=None):
    """``(rows, device, bundle sha256)``: the store's measurements of this bundle's graphs on
    one device under one set of run conditions, chosen by the one rule every reader uses:
    ``device`` if given; else the only device the store has for this bundle; else this
    device, if it is among them; else an error naming them (choose one with ``--device``).
    Then the conditions (threads, provider, power mode: :mod:`edgesdk.runtime.conditions`):
    ``conditions`` if given; else the only set measured; else the most recently measured set
    (each row says which).

    Refuses, with the reason, a store without rows for this bundle's graphs (another bundle, or
    the bundle changed since profiling) and a device it has no rows from.
    """
    bundle = graphs_sha256(manifest)
    with ProfileStore(db, create=False) as store:
        rows = store.rows(bundle_sha256=bundle)
        if not rows:
            others = sorted({r["bundle_sha256"][:12] for r in store.rows()})
            if not others:
                raise ProfileStoreError("{} holds no measurements yet: profile the bundle on the "
                                        "device (edgesdk profile BUNDLE --db {})".format(db, db))
            raise ProfileStoreError(
                "{} has no measurements of this bundle's graphs (sha256 {}); it holds bundles {}. "
                "The bundle was changed or converted again since it was profiled: profile it "
                "again (edgesdk profile BUNDLE --db {})".format(db, bundle[:12], others or "none", db))
    devices = sorted({r["device"] for r in rows})
    if device is None:
        here = device_fingerprint()
        if len(devices) == 1:
            device = devices[0]
        elif here in devices:
            device = here
        else:
            raise InputError("{} has measurements of this bundle from several devices {}; choose "
                             "one with --device (this device is {})".format(db, devices, here))
    elif device not in devices:
        raise ProfileStoreError("{} has no measurements of this bundle from device {}; it has {}"
                                .format(db, device, devices))
    rows = [r for r in rows if r["device"] == device]
    measured = sorted({r["conditions"] for r in rows})
    if conditions is None:
        conditions = max(rows, key=lambda r: r["measured_at"])["conditions"]
    elif conditions not in measured:
        raise ProfileStoreError("{} has no measurements of this bundle on device {} under "
                                "conditions {!r}; it has {}".format(db, device, conditions,
                                                                    measured))
    return [r for r in rows if r["conditions"] == conditions], device, bundle


def selected_builds(manifest):
    """``{graph id: (format, precision)}`` of the builds the manifest selects."""
    return {e["id"]: (e["format"], precision_of(e))
            for e in graph_entries(manifest)}


def one_build(rows, builds):
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
    graph (see :func:`one_build` without it). Latency metrics include the engine's rows.
    """
    flags = one_build([r for r in rows if r["metric"] == "noisy" and r["batch"] == batch], builds)
    noisy = sorted({r["graph"] for r in flags if r["value"]})
    rows = one_build([r for r in rows if r["metric"] == metric
                       and not (is_engine_row(r["graph"]) and metric.startswith("energy"))], builds)
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
            v, interp = per_sample(values[gid], batch, gid)
            interpolated = interpolated or interp
            tables[kind].append(v)
    graph_stage, graph_head = list(tables["stage"]), list(tables["head"])
    engine = dict.fromkeys(ENGINE_ROWS.values(), 0.0)
    for graph, term in ENGINE_ROWS.items():
        if graph in values:
            engine[term], interp = per_sample(values[graph], batch,
                                               "the runtime's own work ({})".format(graph))
            interpolated = interpolated or interp
    tables["stage"] = [v + engine["stage"] for v in tables["stage"]]
    tables["head"] = [v + engine["head"] for v in tables["head"][:-1]] + \
        [v + engine["final"] for v in tables["head"][-1:]]
    if tables["stage"]:
        tables["stage"][0] += engine["call"]  # every sample reaches stage 0, once per call
    unit = "mJ" if metric.startswith("energy") else "ms"
    return CostTable(metric, unit, tables["stage"], tables["head"], device, bundle, batch,
                     interpolated, [min(times), max(times)] if times else [], db, engine, noisy,
                     graph_stage, graph_head)


def cost_table(db, manifest, metric="mean_ms", device=None, batch=1, builds=None):
    """The cost table of the bundle described by ``manifest`` from the store at ``db``: its
    selected builds, or ``builds`` (``{graph id: (format, precision)}``); see
    :func:`bundle_rows` for the device and what is refused. Missing values (e.g. energy from a
    device without a power sensor) are refused too."""
    rows, device, bundle = bundle_rows(db, manifest, device)
    return table_from_rows(rows, metric, [e["id"] for e in manifest["stages"]],
                           [e["id"] for e in manifest["exits"]], device, bundle, batch, db,
                           builds=builds or selected_builds(manifest))
