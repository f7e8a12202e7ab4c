"""Measure a loaded bundle on this device: every stage and exit head, per batch size.

Latency: every graph is timed inside real runs of the engine (:mod:`.timing`): in the order
and with the engine work around it that a real run has (a graph timed in a loop of its own
was 19% cheaper on the sample than inside a real run, which made the cost model miss by 27%).
Warm-up by count and by time (``warmup`` rounds and ``warmup_s`` seconds, whichever is
longer), then timed rounds until at least ``repeats`` and ``min_seconds``: one spike among
few calls dominated a mean of 50 (0.263 ms mean vs 0.014 ms median for one head). Each row
has the mean, a 10% trimmed mean, p10/p50/p90/p99, min, std, the spread p90/p50 and a
``noisy`` flag (spread > 1.5). Four rows hold the engine's own work, fitted from the engine
time of several kinds of run (see :mod:`.timing`): ``runtime`` per stage step,
``runtime-head`` per early exit head that runs, ``runtime-final`` for the final head,
``runtime-call`` once per call.
Memory: the process's peak resident set after the graph ran (what the OS had to give; ONNX
Runtime's own allocations are invisible to Python's tracers). Energy: where a power sensor
exists, the graph's calls run again inside an :class:`EnergyMeter` window of at least
``min_window_s`` (a board's power monitor updates every few milliseconds), with the idle
power measured just before reported beside it. No sensor: energy fields are None and the
status says "no sensor". Python 3.6 compatible.
"""
import time

import numpy as np

from edgesdk.errors import InputError
from edgesdk.manifest import graph_entries
from edgesdk.runtime.reference import read_reference
from edgesdk.runtime.power.meter import EnergyMeter, idle_power
from edgesdk.runtime.timing import STATISTICS, fit_engine, latency_stats, time_runs

_clock = time.perf_counter

try:
    import resource
except ImportError:  # not on Windows
    resource = None

# The engine's own rows: (graph name, fitted term of timing.TERMS, what it is).
RUNTIME_ROWS = (("runtime-call", "call", "once per call"),
                ("runtime", "stage", "per stage step"),
                ("runtime-head", "head", "per early exit head run"),
                ("runtime-final", "final", "the final head, when reached"))
# Defaults of profile_graphs / `edgesdk profile` (time floors: see the module docstring).
WARMUP, WARMUP_S, REPEATS, MIN_SECONDS = 10, 0.2, 200, 1.0


def peak_rss_mb():
    """The process's peak resident set size in MiB (Linux reports KiB), or None."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def example_batch(model, batch):
    """A model input of ``batch`` samples: the bundle's reference inputs, repeated as needed."""
    if model.bundle.manifest.get("reference") is not None:
        x = read_reference(model.bundle, model.memory.limit)[0]
    else:
        shape = [d for d in model.input_spec["shape"][1:]]
        x = np.random.RandomState(0).standard_normal([1] + shape).astype(np.float32)
    reps = -(-batch // x.shape[0])
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch], dtype=np.float32)


def graph_inputs(model, batch):
    """``[(kind, index, graph, input tensors), ...]`` for every stage and head at ``batch``."""
    out, state = [], (example_batch(model, batch),)
    for k in range(model.num_exits):
        out.append(("stage", k, model.stages[k], state))
        state = tuple(model.stages[k].run(state))
        out.append(("exit", k, model.heads[k], state))
    return out


def _energy(graph, tensors, sensor, mean_ms, min_window_s):
    calls = max(1, int(min_window_s * 1000.0 / max(mean_ms, 1e-3)))
    with EnergyMeter(sensor) as meter:
        for _ in range(calls):
            graph.run(tensors)
    r = meter.result
    return (r.energy_j * 1000.0 / calls if r.energy_j is not None else None), r.status


def profile_graphs(model, batch_sizes=(1,), warmup=WARMUP, repeats=REPEATS, sensor=None,
                   min_window_s=1.0, progress=None, warmup_s=WARMUP_S, min_seconds=MIN_SECONDS,
                   between=None, mix=None):
    """One row (a dict) per stage/head and batch size, then the engine's own rows; see the
    module docstring. ``progress`` is called after each row; ``between(seconds)`` after each
    timed round (e.g. an :class:`InterleavedRuns`). ``mix``: the share of samples leaving at
    each exit in the workload to profile for (:func:`exit_mix`); at batch 1 the graphs are
    then timed in runs taking the exits in about that proportion (see
    :func:`~.timing.round_schedule`), otherwise in one run of each kind per round.

    Profile a model no other thread is running: the timed runs share its graphs.
    """
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise InputError("batch sizes must be integers >= 1, got {}".format(list(batch_sizes)))
    if warmup < 0 or repeats < 1 or not warmup_s >= 0 or not min_seconds >= 0:
        raise InputError("need warmup >= 0, repeats >= 1, warmup_s >= 0 and min_seconds >= 0")
    idle = idle_power(sensor, seconds=min(1.0, 2 * min_window_s)) if sensor is not None else None
    rows = []
    for batch in batch_sizes:
        inputs = graph_inputs(model, int(batch))
        graph_ms, engine, kinds = time_runs(model, inputs[0][3][0], warmup, repeats,
                                            warmup_s, min_seconds, between,
                                            mix if int(batch) == 1 else None)
        for slot, (kind, k, graph, tensors) in enumerate(inputs):
            entry = (model.bundle.manifest["stages"] if kind == "stage" else
                     model.bundle.manifest["exits"])[k]
            stats = latency_stats(graph_ms[slot])
            energy_mj, status = (None, "no sensor")
            if sensor is not None:
                energy_mj, status = _energy(graph, tensors, sensor, stats["mean_ms"], min_window_s)
            build = model.builds[entry["id"]]
            row = {"graph": entry["id"], "kind": kind, "index": k, "batch": int(batch),
                   "build": build["format"], "precision": build["precision"], "macs": entry["macs"],
                   "peak_rss_mb": peak_rss_mb(), "energy_mj": energy_mj,
                   "idle_power_w": idle, "energy_status": status}
            row.update(stats)
            rows.append(row)
            if progress:
                progress(row)
        for row in engine_rows(engine, kinds, int(batch)) + gate_rows(
                model, inputs, int(batch), repeats, min_seconds) + spatial_rows(
                model, inputs, int(batch), repeats, min_seconds):
            rows.append(row)
            if progress:
                progress(row)
    return rows


def gate_rows(model, inputs, batch, repeats=REPEATS, min_seconds=MIN_SECONDS):
    """Rows for the stages with gated blocks (:mod:`.gated_stages`): the stage's own graph
    (``STAGE/ungated``), its entry graph (``STAGE/entry``) and each block's graph for the
    samples computing it (``STAGE/run<i>``) and skipping it (``STAGE/skip<i>``), each on the
    whole batch, timed side by side in rounds (each graph in the same loop, so their costs
    compare), and ``STAGE/engine``: what the runtime's block loop adds to its graphs, its
    per-block decisions included (the stage run through every block, less its graphs in the
    same round; may be below 0 on a noisy machine). From them and the share of samples each
    gate keeps, ``convert --profile`` predicts which gates pay."""
    rows = []
    for kind, k, graph, tensors in inputs:
        stage = model.stages[k] if kind == "stage" else None
        if not getattr(stage, "blocks", None) or not stage.enabled:
            continue
        calls = [(name, lambda g=g, feed=feed: g.run(feed))
                 for name, g, feed in _gated_calls(stage, list(tensors))]
        pieces = [slot for slot, c in enumerate(calls) if c[0] == "entry" or
                  c[0].startswith("run")]
        # The pieces inside the runtime's own loop, every block computed.
        calls.append(("engine", lambda: stage.run(list(tensors))))
        stage.force_run = True
        try:
            times = _side_by_side([fn for _, fn in calls], repeats, min_seconds)
        finally:
            stage.force_run = False
        times[-1] = [t - sum(times[slot][r] for slot in pieces) for r, t in enumerate(times[-1])]
        rows += [_side_row(model, k, "gated", name, "ungated", batch, ms)
                 for (name, _), ms in zip(calls, times)]
    return rows


# Active fractions a masked block is timed at (its latency predictor's points).
SPATIAL_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def spatial_rows(model, inputs, batch, repeats=REPEATS, min_seconds=MIN_SECONDS):
    """Rows for the masked blocks (:mod:`.spatial`): the stage's own graph (``STAGE/dense``)
    and the block run on a random pattern of regions at each of :data:`SPATIAL_FRACTIONS`
    (``STAGE/active25`` ...: masker, gather, patch graph, scatter), timed side by side in
    rounds. :func:`edgesdk.converters.spatial.spatial_cost` interpolates between them."""
    from edgesdk.runtime.spatial import region_pattern
    rows = []
    for kind, k, graph, tensors in inputs:
        stage = model.stages[k] if kind == "stage" else None
        if not hasattr(stage, "run_regions") or not stage.enabled:
            continue
        x, g = tensors[0], stage.granularity
        calls = [("dense", lambda: stage.dense.run(list(tensors)))]
        for f in SPATIAL_FRACTIONS:
            keep = region_pattern(len(x), x.shape[2] // g, x.shape[3] // g, f, seed=k)
            calls.append(("active{}".format(int(round(100 * f))), lambda keep=keep: (
                stage.masker.run(list(tensors)), stage.run_regions(list(tensors), keep))))
        times = _side_by_side([fn for _, fn in calls], repeats, min_seconds)
        rows += [_side_row(model, k, "spatial", name, "dense", batch, ms)
                 for (name, _), ms in zip(calls, times)]
    return rows


def _side_by_side(calls, repeats, min_seconds):
    """Milliseconds of each of ``calls`` (no arguments) per round, all in every round, after
    ``WARMUP`` rounds: until ``repeats`` rounds and ``min_seconds``."""
    times = [[] for _ in calls]
    end, done = _clock() + min_seconds, -WARMUP
    while done < repeats or _clock() < end:
        for slot, fn in enumerate(calls):
            t0 = _clock()
            fn()
            if done >= 0:
                times[slot].append((_clock() - t0) * 1000.0)
        done += 1
    return times


def _side_row(model, k, kind, name, own, batch, ms):
    """A row of stage ``k``'s side measurement ``name`` (``own``: the name of the stage's own
    graph, which runs its selected build; the rest are ONNX FP32 graphs)."""
    sid = model.bundle.manifest["stages"][k]["id"]
    build = model.builds[sid] if name == own else None
    row = {"graph": "{}/{}".format(sid, name), "kind": kind, "index": k, "batch": batch,
           "build": build["format"] if build else "onnx",
           "precision": build["precision"] if build else "fp32",
           "macs": model.bundle.manifest["stages"][k]["macs"] if build else None,
           "peak_rss_mb": peak_rss_mb(), "energy_mj": None, "idle_power_w": None,
           "energy_status": "not measured separately"}
    row.update(latency_stats(ms))
    return row


def _gated_calls(stage, tensors):
    """``[(name, graph, inputs)]``: a gated stage's own graph and each of its pieces with
    the inputs a pass computing every block gives it."""
    calls = [("ungated", stage.stage, tensors), ("entry", stage.entry, tensors)]
    out = stage.entry.run(tensors)
    for i, b in enumerate(stage.blocks):
        short = out[2] if b.shortcut else out[0]
        if b.skip is not None:
            calls.append(("skip{}".format(i), b.skip, [short]))
        feed = [out[0], short] if b.shortcut else [out[0]]
        calls.append(("run{}".format(i), b.run, feed))
        out = b.run.run(feed)
    return calls


# Runs per graph of the per-layer pass (each format's own per-node timing).
LAYER_CALLS = 50


def layer_rows(model, batch, calls=LAYER_CALLS):
    """Per-node times of every stage's own graph and every head at ``batch``, by each
    format's own profiler (:meth:`~.executors.base.Executor.layer_times`: ONNX Runtime's
    session profiling, the Relax VM's instrumentation, TensorRT's ``IProfiler``): one row
    per node with ``graph``, ``build``, ``precision``, ``batch``, ``node``, ``op``, ``calls``,
    ``mean_ms`` (per call) and ``share`` (of the graph's nodes' time). Graphs whose format
    has no such timing have no rows."""
    m = model.bundle.manifest
    rows, state = [], (example_batch(model, batch),)
    for k, (stage, head) in enumerate(zip(model.own_graphs(), model.heads)):
        graphs = [(m["stages"][k], stage, state)]
        state = tuple(stage.run(state))
        graphs.append((m["exits"][k], head, state))
        for entry, graph, tensors in graphs:
            times = graph.layer_times(list(tensors), calls)
            if not times:
                continue
            total = sum(ms for _, _, ms, _ in times)
            build = model.builds[entry["id"]]
            rows += [{"graph": entry["id"], "build": build["format"],
                      "precision": build["precision"], "batch": batch, "node": node, "op": op,
                      "calls": calls, "mean_ms": ms / calls,
                      "share": ms / total if total > 0 else None}
                     for node, op, ms, _ in sorted(times, key=lambda t: -t[2])]
    return rows


def engine_rows(engine, kinds, batch):
    """The engine's own rows (:data:`RUNTIME_ROWS`) from the engine time of each run kind:
    every statistic fitted on its own; the spread and flag are those of the run kind with
    every head (the most engine work)."""
    per_kind = {name: latency_stats(ms) for name, ms in engine.items()}
    fitted = {s: fit_engine({n: per_kind[n][s] for n in per_kind}, kinds) for s in STATISTICS}
    full = per_kind[max(kinds, key=lambda k: sum(k[2][1:]))[0]]
    rows = []
    for graph, term, what in RUNTIME_ROWS:
        row = {"graph": graph, "kind": "runtime", "index": -1, "batch": batch, "build": "python",
               "precision": "-", "macs": 0, "peak_rss_mb": peak_rss_mb(), "energy_mj": None,
               "idle_power_w": None, "energy_status": "not measured separately",
               "std_ms": None, "spread": full["spread"], "noisy": full["noisy"],
               "repeats": full["repeats"], "term": what}
        row.update({s: fitted[s][term] for s in STATISTICS})
        rows.append(row)
    return rows


def exit_mix(model, x, batch_size=256):
    """The share of the samples of ``x`` that leave at each exit under the model's thresholds
    (a list, one per exit): the workload :func:`profile_graphs` can time its graphs for."""
    counts = np.zeros(model.num_exits)
    for i in range(0, len(x), batch_size):
        counts += np.bincount(model.run(x[i:i + batch_size]).exit_index, minlength=model.num_exits)
    if not counts.sum():
        raise InputError("an exit mix needs at least one sample")
    return (counts / counts.sum()).tolist()


class InterleavedRuns(object):
    """Real runs of ``x`` at batch 1, timed between the profiler's rounds (pass it as
    ``between``) so that they and the profile see the same machine load: after each round
    the next samples of ``x`` run, in order, for about as long as the round took.

    :meth:`finish` completes the pass in progress (every sample measured equally often) and
    returns the mean wall time around ``model.run()`` in ms per call; ``exit_index`` holds
    each sample's exit. This is how the cost model is checked (benchmarks/profiler.py, the
    sample): a profile taken at another time of a loaded machine differs by the load.
    """

    def __init__(self, model, x):
        self.model, self.x = model, x
        self.next, self.calls, self.seconds = 0, 0, 0.0
        self.exit_index = np.full(len(x), -1, dtype=np.int64)

    def _one(self):
        clock = _clock
        i = self.next
        xi = self.x[i:i + 1]
        t0 = clock()
        r = self.model.run(xi)
        self.seconds += clock() - t0
        self.calls += 1
        self.exit_index[i] = r.exit_index[0]
        self.next = (i + 1) % len(self.x)

    def __call__(self, round_seconds):
        end = _clock() + round_seconds
        while _clock() < end:
            self._one()

    def finish(self):
        """Complete the current pass (at least one); the mean ms per call."""
        while self.calls == 0 or self.next != 0:
            self._one()
        return self.seconds * 1000.0 / self.calls


def profile_end_to_end(model, x, y=None, batch_size=1, sensor=None):
    """Run real inputs through the early-exit runtime; per-sample exits and the totals."""
    exits, labels = [], []
    with EnergyMeter(sensor) as meter:
        for i in range(0, len(x), batch_size):
            r = model.run(x[i:i + batch_size])
            exits.append(r.exit_index)
            labels.append(r.labels)
    exits = np.concatenate(exits) if exits else np.zeros(0, np.int64)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    res = meter.result
    n = max(len(x), 1)
    return {"samples": int(len(x)), "batch_size": batch_size,
            "thresholds": model.thresholds, "exit_index": exits.tolist(),
            "exit_counts": np.bincount(exits, minlength=model.num_exits).tolist(),
            "mean_ms_per_sample": res.seconds * 1000.0 / n,
            "accuracy": float((labels == y).mean()) if y is not None and len(y) else None,
            "energy_mj_per_sample": res.energy_j * 1000.0 / n if res.energy_j is not None else None,
            "energy_status": res.status}


def pick_sensor(disabled=False):
    """The board-total sensor to measure with (the first one probing finds), or None."""
    if disabled:
        return None
    from edgesdk.runtime.power import probe_sensors
    totals = [s for s in probe_sensors() if s.total]
    return totals[0] if totals else None


class _NoRecorder(object):
    def __call__(self, row):
        pass

    def layers(self, rows):
        pass

    def close(self):
        pass


def model_providers(model):
    """The execution providers the model's ONNX graphs got, in order of first use (the CPU's
    alone where it has none)."""
    seen = []
    for r in model.ran.values():
        seen += [p for p in r.get("providers") or [] if p not in seen]
    return seen or ["CPUExecutionProvider"]


def profile_bundle(bundle_path, batch_sizes=(1,), warmup=WARMUP, repeats=REPEATS, db=None,
                   data=None, no_sensor=False, threads=None, progress=True, warmup_s=WARMUP_S,
                   min_seconds=MIN_SECONDS, providers=None, per_layer=False):
    """Profile a bundle on this device, as ``edgesdk profile`` does; returns a JSON-able dict.

    Every stage and head at each batch size (see :func:`profile_graphs`: ``warmup``,
    ``warmup_s``, ``repeats`` and ``min_seconds`` are its time floors), with the first
    board-total power sensor found unless ``no_sensor``; with ``data`` (an .npz or image
    folder) also an end-to-end early-exit run. With ``db`` each graph's rows are committed
    to that profile store as soon as they are measured (and the labelled end-to-end run too).
    ``per_layer``: also each graph's per-node times (:func:`layer_rows`), in ``layers``
    and the store's ``layer_times`` table.
    """
    from edgesdk.progress import Progress
    from edgesdk.runtime.datafiles import load_inputs
    from edgesdk.runtime.build_select import graph_builds
    from edgesdk.runtime.engine import EdgeModel, load_bundle
    model = load_bundle(bundle_path, threads=threads, providers=providers)
    # The selected builds first, then each other format and precision the bundle holds (that
    # this machine runs), chained as the runtime would run them; a build already measured is
    # not measured again.
    m = model.bundle.manifest
    others = sorted({(b["format"], b["precision"])
                     for e in graph_entries(m) for b in graph_builds(e)[1:]})
    # Graphs without one of those builds run their selected one in that pass (fallback).
    configs = [model] + [EdgeModel(model.bundle, threads=threads, builds=p, fallback=True,
                                   providers=providers) for p in others]
    sensor = pick_sensor(no_sensor)
    if db:
        from edgesdk.profiles import ProfileRecorder
        from edgesdk.runtime import conditions
        from edgesdk.runtime.executors import EXECUTORS
        # The threads the sessions really run on (the process's pool), not those asked for.
        threads_used = EXECUTORS.get("onnx").threads_in_use(threads)
        record = ProfileRecorder(db, model.bundle.manifest,
                                 "{} {}".format(sensor.name, sensor.rail) if sensor else "none",
                                 conditions.describe(conditions.current(
                                     threads_used, model_providers(model))))
    else:
        record = _NoRecorder()
    # graphs + the runtime's own rows, per configuration
    gated = sum(3 + len(s.blocks) + sum(b.skip is not None for b in s.blocks)
                for s in model.adaptive_stages() if getattr(s, "blocks", None))
    gated += (1 + len(SPATIAL_FRACTIONS)) * len(model.spatial_stages())
    total = (2 * model.num_exits + len(RUNTIME_ROWS) + gated) * len(batch_sizes) * len(configs)
    rows, seen = [], set()
    try:
        with Progress(total, "profiling", enabled=progress) as bar:
            def done(row):
                key = (row["graph"], row["build"], row["precision"], row["batch"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
                    record(row)
                bar.update(note=row["graph"])
            x = y = mix = None
            if data:  # the graphs are timed for the data's exit mix at the bundle's thresholds
                x, y, _ = load_inputs(data, model.input_spec)
                mix = exit_mix(model, x)
            for config in configs:
                profile_graphs(config, batch_sizes, warmup, repeats, sensor, progress=done,
                               warmup_s=warmup_s, min_seconds=min_seconds, mix=mix)
        out = {"bundle": model.bundle.root, "sensor": sensor.describe() if sensor else None,
               "graphs": rows, "builds": [c.ran for c in configs], "exit_mix": mix}
        if per_layer:
            seen_layers, out["layers"] = set(), []
            for config in configs:
                for batch in batch_sizes:
                    new = [r for r in layer_rows(config, int(batch)) if
                           (r["graph"], r["build"], r["precision"], r["batch"]) not in seen_layers]
                    seen_layers |= {(r["graph"], r["build"], r["precision"], r["batch"])
                                    for r in new}
                    out["layers"] += new
            if db:
                record.layers(out["layers"])
        if data:
            out["end_to_end"] = profile_end_to_end(model, x, y, sensor=sensor)
            if db and y is not None:
                record.end_to_end(model, x, y, out["end_to_end"])
    finally:
        record.close()
    return out
