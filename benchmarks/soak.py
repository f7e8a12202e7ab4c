"""Soak and load: one loaded sample bundle serving 100,000+ inferences from several threads.

The sample's multi-exit ResNet (trained or reused, converted and calibrated by the sample's
``prepare()``) is loaded ONCE and called by ``--threads`` worker threads at the same time
(thread safety: the runtime documents ``EdgeModel.run`` as safe to call concurrently on one
loaded model; ONNX Runtime sessions are thread-safe for ``run()``, and executors that are
not are serialized by the engine; ``--threads 1`` soaks without concurrency). The calls are
a deterministic, seeded schedule over the real MNIST test digits: batch sizes mixed (1 most
often, up to 64), early exits alternating on and off (even calls on: calibrated thresholds or
per-call thresholds with some exits disabled; odd calls: ``early_exit=False``). An inference
is one sample processed. A warm-up (``--warmup`` inferences, same schedule and threads) runs
first so allocator arenas and ONNX Runtime's caches settle; it is not measured. With 2 threads
and ONNX Runtime's arena they settled over tens of thousands of inferences (after a 5,000
warm-up, +7.1 MB in the first 20,000, +0.5 MB over the last 80,000); hence 20,000 by default.

The process sets up its memory as a long-running service should
(:func:`edgesdk.runtime.memory.steady_memory`: no ONNX Runtime arena, a fixed glibc mmap
threshold); ``--default-memory`` leaves both as they are, where RSS grew in steps with 2
threads (+9.6 to +14 MB over 100k; +0.2 MB with 1 thread).

Every call is checked: shapes, probabilities finite and summing to 1, labels = argmax,
exit indices in range and only at enabled exits (the last exit when exits are off), each
sample's probabilities equal to the reference at its exit (all exits computed up front, one
thread, atol 1e-4) and its exit decision consistent with the reference scores (away from the
threshold by more than 1e-4). Anything wrong, or any exception, is an error.

Memory: resident set size (VmRSS, /proc/self/status) every ``--rss-every`` inferences;
start = right after the warm-up, growth = end - start (both with no call in flight; samples
between them vary by the tensors alive, about 15 MB without an arena), slope = least squares MB
per 10,000 inferences. Latency: wall time of each ``run()`` call. p99 drift = p99 of the batch-1 calls
in the last tenth of the measured inferences / p99 of the batch-1 calls in the first tenth
(batch 1 only, so both tenths compare like with like; the warm-up is not in the first tenth).
Goals: 0 errors, RSS growth <= 5 MB, p99 drift <= 1.1. The last line is one JSON object.
"""
import datetime
import gc
import json
import os
import platform
import sys
import threading
import time

import numpy as np

from common import ROOT, cpu, print_cpu, sample_parser

GOAL_ERRORS, GOAL_RSS_MB, GOAL_DRIFT = 0, 5.0, 1.1
BATCHES = [1, 2, 4, 8, 16, 32, 64]
BATCH_WEIGHTS = [0.55, 0.10, 0.10, 0.08, 0.07, 0.05, 0.05]  # ~7.7 samples per call
PER_CALL = [None, 0.5, 0.8, 0.95, 0.99]  # per-call thresholds (None disables that exit)
TOL = 1e-4


def rss_mb():
    """Resident set size of this process in MB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def schedule(total, n_images, num_exits, rng):
    """Calls ``(batch, first image, thresholds or None, early_exit)`` until ``total`` samples."""
    calls, done, i = [], 0, 0
    while done < total:
        b = min(int(rng.choice(BATCHES, p=BATCH_WEIGHTS)), total - done, n_images)
        start = int(rng.integers(0, n_images - b + 1))
        if i % 2:
            thr, early = None, False
        elif i % 4 == 0:
            thr, early = None, True
        else:
            thr = [PER_CALL[j] for j in rng.integers(0, len(PER_CALL), num_exits - 1)] + [None]
            early = True
        calls.append((b, start, thr, early))
        done, i = done + b, i + 1
    return calls


class Checker(object):
    """Checks one call's RunResult against reference probabilities at every exit."""

    def __init__(self, model, ref):
        self.model, self.ref = model, ref  # ref: (exits, images, classes)
        self.scores = np.stack([p.score(r) for p, r in zip(model.policies, ref)])
        self.sign = np.array([1.0 if p.higher_is_confident else -1.0 for p in model.policies])

    def problems(self, r, b, start, thr, early):
        """A description of what is wrong with ``r``, or None."""
        m, last = self.model, self.model.num_exits - 1
        if len(r.labels) != b or r.probabilities.shape != (b, m.num_classes) or \
                r.exit_index.shape != (b,):
            return "shapes {} {} {} for batch {}".format(
                r.labels.shape, r.probabilities.shape, r.exit_index.shape, b)
        p, e = r.probabilities, r.exit_index
        if not np.isfinite(p).all() or np.abs(p.sum(axis=1) - 1.0).max() > TOL:
            return "probabilities not finite or not summing to 1"
        if (r.labels != p.argmax(axis=1)).any():
            return "labels differ from argmax of the probabilities"
        if e.min() < 0 or e.max() > last:
            return "exit index out of range: {}".format(e.tolist())
        t = (list(m.thresholds) if thr is None else thr) if early else [None] * m.num_exits
        enabled = np.array([k == last or t[k] is not None for k in range(m.num_exits)])
        if not enabled[e].all():
            return "exit at a disabled exit: {} (thresholds {})".format(e.tolist(), t)
        rows = np.arange(start, start + b)
        if np.abs(p - self.ref[e, rows]).max() > TOL:
            return "probabilities differ from the reference by {:.2e}".format(
                np.abs(p - self.ref[e, rows]).max())
        for k in range(last):
            if t[k] is None:
                continue
            margin = self.sign[k] * (self.scores[k, rows] - t[k])  # > 0: confident
            if ((e > k) & (margin > TOL)).any() or ((e == k) & (margin < -TOL)).any():
                return "exit decision at exit {} differs from the reference scores".format(k)
        return None


class Soak(object):
    """Worker threads pulling calls from one shared schedule; records latencies and RSS."""

    def __init__(self, model, x, checker, calls, rss_every, progress=None):
        self.model, self.x, self.checker, self.calls = model, x, checker, calls
        self.rss_every, self.progress = rss_every, progress
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.records = []  # (samples done after this call, batch, ms), in completion order
        self.rss = [(0, rss_mb())]
        self.errors, self.messages = 0, []

    def worker(self):
        model, x, check = self.model, self.x, self.checker.problems
        clock = time.perf_counter
        while True:
            with self.lock:
                if self.next >= len(self.calls):
                    return
                b, start, thr, early = self.calls[self.next]
                self.next += 1
            problem = None
            t0 = clock()
            try:
                r = model.run(x[start:start + b], thr, early)
                ms = (clock() - t0) * 1000.0
                problem = check(r, b, start, thr, early)
            except Exception as exc:  # any failure of the runtime counts; the soak goes on
                ms = (clock() - t0) * 1000.0
                problem = "{}: {}".format(type(exc).__name__, exc)
            with self.lock:
                before, self.done = self.done, self.done + b
                self.records.append((self.done, b, ms))
                if problem is not None:
                    self.errors += 1
                    if len(self.messages) < 5:
                        self.messages.append("call {} (batch {}, thresholds {}, early_exit {}): {}"
                                             .format(self.next, b, thr, early, problem))
                if self.done // self.rss_every > before // self.rss_every:
                    self.rss.append((self.done, rss_mb()))
                if self.progress is not None:
                    self.progress.update(b, "{} errors".format(self.errors))

    def run(self, threads):
        pool = [threading.Thread(target=self.worker, name="soak-{}".format(i))
                for i in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        self.wall_s = time.perf_counter() - t0
        self.rss.append((self.done, rss_mb()))
        return self


def p99(values):
    return float(np.percentile(values, 99)) if len(values) else float("nan")


def summarize(soak, total):
    """The figures of a measured soak: RSS, slope, p99 per tenth, drift."""
    done = np.array([r[0] for r in soak.records])
    batch = np.array([r[1] for r in soak.records])
    ms = np.array([r[2] for r in soak.records])
    tenth = np.minimum(((done - 1) * 10) // total, 9)
    b1 = batch == 1
    per_tenth = [p99(ms[b1 & (tenth == d)]) for d in range(10)]
    at, mb = np.array(soak.rss, dtype=float).T
    slope = float(np.polyfit(at / 1e4, mb, 1)[0]) if len(at) > 2 else float("nan")
    return {
        "inferences": int(soak.done), "calls": int(len(ms)), "batch1_calls": int(b1.sum()),
        "batch1_calls_per_tenth": [int((b1 & (tenth == d)).sum()) for d in range(10)],
        "errors": int(soak.errors),
        "rss_start_mb": round(float(mb[0]), 2), "rss_end_mb": round(float(mb[-1]), 2),
        "rss_max_mb": round(float(mb.max()), 2),
        "rss_growth_mb": round(float(mb[-1] - mb[0]), 2),
        "rss_slope_mb_per_10k": round(slope, 4),
        "p99_first_ms": round(per_tenth[0], 4), "p99_last_ms": round(per_tenth[-1], 4),
        "p99_drift": round(per_tenth[-1] / per_tenth[0], 4),
        "p99_per_tenth_ms": [round(v, 4) for v in per_tenth],
        "p50_batch1_ms": round(float(np.median(ms[b1])), 4),
        "p99_batch1_ms": round(p99(ms[b1]), 4),
        "throughput_per_s": round(soak.done / soak.wall_s, 1),
        "wall_s": round(soak.wall_s, 2),
    }


def write_series(out_dir, soak, summary):
    """The RSS and latency series as JSON and, with matplotlib, a PNG plot."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "soak_series.json"), "w") as f:
        json.dump({"summary": summary, "rss": soak.rss, "calls": soak.records}, f)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    at, mb = np.array(soak.rss, dtype=float).T
    a.plot(at, mb, ".-", ms=3)
    a.set_ylabel("RSS (MB)")
    a.grid(alpha=0.3)
    rec = np.array([(d, ms) for d, bs, ms in soak.records if bs == 1])
    b.plot(rec[:, 0], rec[:, 1], ",", alpha=0.5)
    b.set_yscale("log")
    b.set_ylabel("batch-1 call (ms)")
    b.set_xlabel("inferences")
    b.grid(alpha=0.3)
    fig.suptitle("edgesdk soak: {} threads, {} inferences".format(summary["threads"],
                                                                summary["inferences"]))
    fig.tight_layout()
    png = os.path.join(out_dir, "soak.png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv=None):
    parser = sample_parser(__doc__)
    for action in parser._actions:
        if action.dest == "threads":
            action.default, action.help = 2, "worker threads calling the one loaded model"
        elif action.dest == "workdir":
            action.default = os.path.join(ROOT, "benchmarks", "out", "soak")
        elif action.dest == "samples":
            action.help = "test images the calls draw from"
    parser.add_argument("--inferences", type=int, default=100000, help="measured samples")
    parser.add_argument("--warmup", type=int, default=20000,
                        help="samples before measuring (allocators settle over tens of "
                             "thousands with 2 threads; see the module doc)")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="ONNX Runtime threads per call (1: the workers don't oversubscribe)")
    parser.add_argument("--rss-every", type=int, default=1000, help="RSS sample interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for the RSS/latency series (JSON, PNG)")
    parser.add_argument("--default-memory", action="store_true",
                        help="keep ONNX Runtime's arena and glibc's dynamic mmap threshold "
                             "(do not call steady_memory)")
    args = parser.parse_args(argv)
    print_cpu()
    if args.threads < 1 or args.inferences < 10 or args.warmup < 0:
        parser.error("--threads >= 1, --inferences >= 10 and --warmup >= 0")

    from edgesdk.runtime.memory import steady_memory
    steady = not args.default_memory
    if steady:
        steady_memory()
    from run import prepare
    from edgesdk.progress import Progress
    from edgesdk.runtime import load_bundle, preprocess
    # prepare() opens ONNX Runtime sessions: the process-wide pool gets its size there.
    splits, _, bundle, _ = prepare(args.workdir, epochs=args.epochs,
                                   threads=args.intra_op_threads)
    model = load_bundle(bundle, threads=args.intra_op_threads)
    x = preprocess(splits["test"][0][:args.samples], model.input_spec)
    checker = Checker(model, np.stack(model.exit_probabilities(x)))
    rng = np.random.default_rng(args.seed)
    warm = schedule(args.warmup, len(x), model.num_exits, rng) if args.warmup else []
    calls = schedule(args.inferences, len(x), model.num_exits, rng)

    warm_soak = Soak(model, x, checker, warm, max(args.warmup, 1)).run(args.threads)
    gc.collect()
    objects_start = len(gc.get_objects())
    load_start = os.getloadavg()[0]
    with Progress(args.inferences, "soak") as bar:
        soak = Soak(model, x, checker, calls, args.rss_every, bar).run(args.threads)
    gc.collect()
    summary = {"date": datetime.date.today().isoformat(),
               "machine": "{} cores {}".format(os.cpu_count(), platform.machine()),
               "threads": args.threads, "intra_op_threads": args.intra_op_threads,
               "seed": args.seed, "steady_memory": steady,
               "warmup_inferences": warm_soak.done,
               "warmup_errors": warm_soak.errors}
    summary.update(summarize(soak, args.inferences))
    summary["python_objects_growth"] = len(gc.get_objects()) - objects_start
    summary["load_avg_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    summary["errors"] += warm_soak.errors
    summary["goals_met"] = {"errors": summary["errors"] <= GOAL_ERRORS,
                            "rss_growth": summary["rss_growth_mb"] <= GOAL_RSS_MB,
                            "p99_drift": summary["p99_drift"] <= GOAL_DRIFT}
    png = write_series(args.out, soak, summary) if args.out else None

    print("\nedgesdk soak: {} inferences in {} calls ({} at batch 1), {} worker thread(s) on one "
          "loaded bundle, {} intra-op thread(s), {} {}".format(
              summary["inferences"], summary["calls"], summary["batch1_calls"], args.threads,
              args.intra_op_threads, summary["machine"], platform.processor() or ""))
    rows = [("errors (incl. warm-up)", summary["errors"], "0"),
            ("RSS start / end (MB)", "{} / {}".format(summary["rss_start_mb"],
                                                      summary["rss_end_mb"]), ""),
            ("RSS growth (MB)", summary["rss_growth_mb"], "<= 5"),
            ("RSS slope (MB / 10k inf.)", summary["rss_slope_mb_per_10k"], ""),
            ("p99 batch 1, first tenth (ms)", summary["p99_first_ms"], ""),
            ("p99 batch 1, last tenth (ms)", summary["p99_last_ms"], ""),
            ("p99 drift (last / first)", summary["p99_drift"], "<= 1.1"),
            ("p50 / p99 batch 1, all (ms)", "{} / {}".format(summary["p50_batch1_ms"],
                                                             summary["p99_batch1_ms"]), ""),
            ("throughput (inferences/s)", summary["throughput_per_s"], ""),
            ("Python objects growth", summary["python_objects_growth"], ""),
            ("wall time (s)", summary["wall_s"], "")]
    print("\n{:<32}{:>20}{:>10}".format("figure", "value", "goal"))
    for name, value, goal in rows:
        print("{:<32}{:>20}{:>10}".format(name, value, goal))
    print("\np99 per tenth (ms): {}".format(summary["p99_per_tenth_ms"]))
    print("batch-1 calls per tenth: {}".format(summary["batch1_calls_per_tenth"]))
    print("1-min load average at start / end: {}".format(summary["load_avg_1min"]))
    for msg in soak.messages + warm_soak.messages:
        print("error: " + msg)
    if png:
        print("series: {}".format(png))
    print("goals met: {}".format(summary["goals_met"]))
    summary.update(cpu())
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
