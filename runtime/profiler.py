"""Measure a loaded bundle on this device: every stage and exit head, per batch size.

Latency: warm-up, then ``repeats`` timed passes through the whole chain in the order the
runtime calls the graphs (stage 0, head 0, stage 1, ...), each call timed on its own (mean,
std, p50/p90/p99). Timing a graph in a loop of its own was 19% cheaper on the sample than
inside a real run (warm caches), which made the cost model miss by 27%. A ``runtime`` row
records the engine's own work per stage (an end-to-end call minus its graphs). Memory: the
process's peak resident set after the graph ran (what the OS had to give; ONNX Runtime's own
allocations are invisible to Python's tracers). Energy: where a power sensor exists, the
timed calls run again inside an :class:`EnergyMeter` window of at least ``min_window_s`` (a
board's power monitor updates every few milliseconds), with the idle power measured just
before reported beside it. No sensor: energy fields are None and the status says "no sensor".
Python 3.6 compatible.
"""
import time

import numpy as np

from edgesdk.errors import InputError
from edgesdk.runtime.datafiles import read_npz
from edgesdk.runtime.policies import softmax
from edgesdk.runtime.power.meter import EnergyMeter, idle_power

try:
    import resource
except ImportError:  # not on Windows
    resource = None


def peak_rss_mb():
    """The process's peak resident set size in MiB (Linux reports KiB), or None."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def latency_stats(ms):
    """Summary of per-call latencies in milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    return {"mean_ms": float(a.mean()), "std_ms": float(a.std()), "p50_ms": float(np.percentile(a, 50)),
            "p90_ms": float(np.percentile(a, 90)), "p99_ms": float(np.percentile(a, 99)),
            "min_ms": float(a.min()), "repeats": int(a.size)}


def example_batch(model, batch):
    """A model input of ``batch`` samples: the bundle's reference inputs, repeated as needed."""
    ref = model.bundle.manifest.get("reference")
    if ref is not None:
        x = read_npz(model.bundle.path(ref["file"]), model.memory.limit)["input"]
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


def _time_chain(model, x, warmup, repeats):
    """Per-call latencies (ms) of every graph, timed inside chained passes; plus the engine's
    own per-stage overhead (ms) from full runs without early exit."""
    clock = time.perf_counter
    graphs = [g for k in range(model.num_exits) for g in (model.stages[k], model.heads[k])]
    times = [[] for _ in graphs]
    for r in range(warmup + repeats):
        state = (x,)
        for k in range(model.num_exits):
            t0 = clock()
            nxt = model.stages[k].run(state)
            t1 = clock()
            # A head's cost includes the exit decision the runtime makes on its output.
            p = softmax(model.heads[k].run(nxt)[0])
            model.policies[k].exits(p, 0.5)
            t2 = clock()
            state = nxt
            if r >= warmup:
                times[2 * k].append((t1 - t0) * 1000.0)
                times[2 * k + 1].append((t2 - t1) * 1000.0)
    # The engine's own cost: a full run (every stage, final head) minus the same graphs.
    graph_ms = sum(np.median(times[2 * k]) for k in range(model.num_exits)) + np.median(times[-1])
    full = []
    for r in range(warmup + repeats):
        t0 = clock()
        model.run(x, early_exit=False)
        if r >= warmup:
            full.append((clock() - t0) * 1000.0)
    overhead = max(0.0, (float(np.median(full)) - graph_ms) / model.num_exits)
    return dict(zip(graphs, times)), overhead


def _energy(graph, tensors, sensor, mean_ms, min_window_s):
    calls = max(1, int(min_window_s * 1000.0 / max(mean_ms, 1e-3)))
    with EnergyMeter(sensor) as meter:
        for _ in range(calls):
            graph.run(tensors)
    r = meter.result
    return (r.energy_j * 1000.0 / calls if r.energy_j is not None else None), r.status


def profile_graphs(model, batch_sizes=(1,), warmup=10, repeats=50, sensor=None,
                   min_window_s=1.0, progress=None):
    """One row (a dict) per stage/head and batch size; see the module docstring.

    ``progress`` is called after each row.
    """
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise InputError("batch sizes must be integers >= 1, got {}".format(list(batch_sizes)))
    if warmup < 0 or repeats < 1:
        raise InputError("need warmup >= 0 and repeats >= 1")
    idle = idle_power(sensor, seconds=min(1.0, 2 * min_window_s)) if sensor is not None else None
    rows = []
    for batch in batch_sizes:
        inputs = graph_inputs(model, int(batch))
        chain_ms, overhead_ms = _time_chain(model, inputs[0][3][0], warmup, repeats)
        for kind, k, graph, tensors in inputs:
            entry = (model.bundle.manifest["stages"] if kind == "stage" else
                     model.bundle.manifest["exits"])[k]
            stats = latency_stats(chain_ms[graph])
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
        rows.append(_overhead_row(overhead_ms, int(batch)))
        if progress:
            progress(rows[-1])
    return rows


def _overhead_row(ms, batch):
    """The engine's own work per stage step, as a row like the graphs' (mean only)."""
    row = {"graph": "runtime", "kind": "runtime", "index": -1, "batch": batch, "build": "python",
           "precision": "-", "macs": 0, "peak_rss_mb": peak_rss_mb(), "energy_mj": None,
           "idle_power_w": None, "energy_status": "not measured separately"}
    row.update({"mean_ms": ms, "std_ms": None, "p50_ms": ms, "p90_ms": ms, "p99_ms": ms,
                "min_ms": ms, "repeats": None})
    return row


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

    def close(self):
        pass


def profile_bundle(bundle_path, batch_sizes=(1,), warmup=10, repeats=50, db=None, data=None,
                   no_sensor=False, threads=None, progress=True):
    """Profile a bundle on this device, as ``edgesdk profile`` does; returns a JSON-able dict.

    Every stage and head at each batch size (see :func:`profile_graphs`), with the first
    board-total power sensor found unless ``no_sensor``; with ``data`` (an .npz or image
    folder) also an end-to-end early-exit run. With ``db`` each graph's rows are committed
    to that profile store as soon as they are measured (and the labelled end-to-end run too).
    """
    from edgesdk.progress import Progress
    from edgesdk.runtime.datafiles import load_inputs
    from edgesdk.runtime.build_select import graph_builds
    from edgesdk.runtime.engine import EdgeModel, load_bundle
    model = load_bundle(bundle_path, threads=threads)
    # The selected builds first, then each other format and precision the bundle holds (that
    # this machine runs), chained as the runtime would run them; a build already measured is
    # not measured again.
    m = model.bundle.manifest
    others = sorted({(b["format"], b["precision"])
                     for e in m["stages"] + m["exits"] for b in graph_builds(e)[1:]})
    # Graphs without one of those builds run their selected one in that pass (fallback).
    configs = [model] + [EdgeModel(model.bundle, threads=threads, builds=p, fallback=True)
                         for p in others]
    sensor = pick_sensor(no_sensor)
    if db:
        from edgesdk.profiles import ProfileRecorder
        record = ProfileRecorder(db, model.bundle.manifest,
                                 "{} {}".format(sensor.name, sensor.rail) if sensor else "none")
    else:
        record = _NoRecorder()
    # graphs + the runtime's own row, per configuration
    total = (2 * model.num_exits + 1) * len(batch_sizes) * len(configs)
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
            for config in configs:
                profile_graphs(config, batch_sizes, warmup, repeats, sensor, progress=done)
        out = {"bundle": model.bundle.root, "sensor": sensor.describe() if sensor else None,
               "graphs": rows, "builds": [c.ran for c in configs]}
        if data:
            x, y, _ = load_inputs(data, model.input_spec)
            out["end_to_end"] = profile_end_to_end(model, x, y, sensor=sensor)
            if db and y is not None:
                record.end_to_end(model, x, y, out["end_to_end"])
    finally:
        record.close()
    return out
