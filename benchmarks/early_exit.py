"""Early exit on the edgesdk runtime vs one monolithic ONNX Runtime session, side by side.

Same trained sample model, same held-out MNIST test images, same thread settings, one run:
 (a) PyTorch eager, all stages + final head
 (b) one monolithic ONNX Runtime session of the same (intermediate heads removed)
 (c) the edgesdk runtime, early exits disabled (staged: one session per stage)
 (d) the edgesdk runtime with the calibrated thresholds
(b), (c), (d) are timed in interleaved rounds so machine noise hits them alike; (a) runs in
its own block first (PyTorch's worker threads would otherwise compete with ONNX Runtime's).
Then the engine's own work per call and per stage step at batch 1: with stub graphs that
return preallocated outputs of the real shapes (run() alone), and between the real graphs
(the profiler's runtime rows, medians). The last line printed is one JSON object.
"""
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

from common import cpu, print_cpu, sample_parser




def monolithic(model):
    """All stages then the final head as one nn.Module (what a static deployment runs)."""
    import torch

    class Monolithic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = model.stages
            self.head = model.heads[-1]

        def forward(self, x):
            for stage in self.stages:
                x = stage(x)
            return self.head(x)
    return Monolithic().eval()


def ort_session(module, threads):
    """Export ``module`` like the converter does and open it with edgesdk's session settings."""
    import torch
    from edgesdk.converters.onnx_export import export_graph
    from edgesdk.runtime.executors.ort import make_session
    graph = export_graph(module, (torch.zeros(1, 1, 28, 28),), ["x"], ["logits"], 13, "monolithic")
    sess = make_session(graph.SerializeToString(), threads)
    return lambda x: sess.run(["logits"], {"x": x})[0]


def timed_rounds(methods, x, batch, rounds, warmup=20):
    """Interleaved timing: each round runs every method over its share of ``x``.

    Returns ({name: seconds per sample}, {name: concatenated outputs of the first pass}).
    """
    chunks = [x[i:i + batch] for i in range(0, len(x), batch)]
    for fn in methods.values():
        for c in chunks[:max(1, warmup // batch)]:
            fn(c)
    total = {k: 0.0 for k in methods}
    outputs = {k: [] for k in methods}
    names = list(methods)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn = methods[name]
            t0 = time.perf_counter()
            outs = [fn(c) for c in chunks]
            total[name] += time.perf_counter() - t0
            if r == 0:
                outputs[name] = outs
    return {k: v / (rounds * len(x)) for k, v in total.items()}, outputs


class _Stub(object):
    """A graph that returns preallocated outputs: run() then costs only the engine's work."""

    def __init__(self, outputs):
        self.outputs = outputs

    def run(self, *args):
        return self.outputs


def engine_overhead(edge, x, seconds=2.0):
    """The engine's own work at batch 1 with stub graphs at the bundle's real shapes (the
    outputs of a real run of ``x[:1]``), so that only run() itself is timed: median wall time
    of every kind of run the profiler times (every sample leaving at exit j; the final head
    only), fitted as ms per call, stage step, early head and final head (runtime/timing.py).
    ``per_stage_step_ms``: a run through every stage and head, less the per-call part, per
    stage. Returns a dict of ms."""
    from edgesdk.runtime.timing import _forced, fit_engine, run_kinds
    x1 = x[:1]
    state, stages, heads = (x1,), [], []
    for k in range(edge.num_exits):
        state = edge.stages[k].run(state)
        stages.append(_Stub([np.array(s) for s in state]))
        heads.append(_Stub([np.array(v) for v in edge.heads[k].run(state)]))
    probe = _forced(edge)
    probe.stages, probe.heads = stages, heads
    kinds = run_kinds(edge)
    calls = {name: [] for name, _, _ in kinds}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for name, thr, _ in kinds:
            probe.forced = thr
            for _ in range(50):
                t0 = time.perf_counter()
                probe.run(x1)
                calls[name].append(time.perf_counter() - t0)
    med = {name: 1e3 * float(np.median(v)) for name, v in calls.items()}
    fit = fit_engine(med, kinds)
    full = med["exit{}".format(edge.num_exits - 1)]
    out = {k + "_ms": v for k, v in fit.items()}
    out.update({"full_run_ms": full, "per_stage_step_ms": (full - fit["call"]) / edge.num_exits,
                "calls_per_kind": len(calls[kinds[0][0]])})
    return out


def engine_in_real_runs(edge, x):
    """The profiler's engine rows for the bundle at batch 1 (real graphs, timed inside real
    runs; medians): ms per call, stage step, early head and final head."""
    from edgesdk.runtime.profiler import profile_graphs
    rows = [r for r in profile_graphs(edge, [1]) if r["kind"] == "runtime"]
    fit = {r["graph"]: r["p50_ms"] for r in rows}
    out = {"call_ms": fit["runtime-call"], "stage_ms": fit["runtime"],
           "head_ms": fit["runtime-head"], "final_ms": fit["runtime-final"]}
    out["per_stage_step_ms"] = (out["stage_ms"] * edge.num_exits + out["head_ms"] *
                                (edge.num_exits - 1) + out["final_ms"]) / edge.num_exits
    return out


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print_cpu()

    import torch
    from run import prepare
    from edgesdk.runtime import load_bundle, preprocess
    torch.set_num_threads(args.threads)
    splits, model, bundle, cal = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    edge = load_bundle(bundle, threads=args.threads)
    x = preprocess(splits["test"][0], edge.input_spec)[:args.samples]
    y = splits["test"][1][:args.samples]
    mono = monolithic(model)
    run_ort = ort_session(mono, args.threads)

    def eager(c):
        with torch.no_grad():
            return mono(torch.from_numpy(c)).numpy()

    methods = {
        "b_ort_monolithic": run_ort,
        "c_edgesdk_no_exit": lambda c: edge.run(c, early_exit=False),
        "d_edgesdk_early_exit": lambda c: edge.run(c),
    }
    results = {}
    for batch in (1, 64):
        t_eager, _ = timed_rounds({"a_pytorch_eager": eager}, x, batch, rounds=max(1, args.rounds // 2))
        t, outs = timed_rounds(methods, x, batch, args.rounds)
        t.update(t_eager)
        results[batch] = (t, outs)

    t1, outs1 = results[1]
    acc_mono = float((np.concatenate(outs1["b_ort_monolithic"]).argmax(1) == y).mean())
    ee = outs1["d_edgesdk_early_exit"]
    acc_ee = float((np.concatenate([r.labels for r in ee]) == y).mean())
    acc_staged = float((np.concatenate([r.labels for r in outs1["c_edgesdk_no_exit"]]) == y).mean())
    exits = np.bincount(np.concatenate([r.exit_index for r in ee]), minlength=edge.num_exits)

    info = cpu()
    print("\nedgesdk early-exit benchmark: {} MNIST test images, {} threads, {} rounds, {}, CPU {} "
          "(avx2 {}, avx512_vnni {})".format(len(y), args.threads, args.rounds,
                                            platform.machine(), info["cpu"], info["avx2"],
                                            info["avx512_vnni"]))
    print("calibrated thresholds: {}; exits taken: {}".format(
        ["off" if v is None else round(v, 4) for v in edge.thresholds[:-1]], exits.tolist()))
    print("\n{:<24}{:>14}{:>16}{:>12}".format("method", "b1 ms/sample", "b64 ms/sample", "vs (b) b1"))
    for name in ("a_pytorch_eager", "b_ort_monolithic", "c_edgesdk_no_exit", "d_edgesdk_early_exit"):
        print("{:<24}{:>14.3f}{:>16.3f}{:>12.3f}".format(
            name, 1e3 * t1[name], 1e3 * results[64][0][name], t1[name] / t1["b_ort_monolithic"]))
    print("\naccuracy: monolithic {:.2%}, staged {:.2%}, early exit {:.2%}".format(
        acc_mono, acc_staged, acc_ee))
    engine = engine_overhead(edge, x)
    real = engine_in_real_runs(edge, x)
    print("\nthe engine's own work at batch 1 (ms): stub graphs (run() alone): per call {:.4f}, "
          "per stage step {:.4f} (stage {:.4f} + early head {:.4f}; final head {:.4f}); "
          "between the real graphs (profiler, medians): per call {:.4f}, per stage step "
          "{:.4f}; goal <= 0.02 per stage step".format(
              engine["call_ms"], engine["per_stage_step_ms"], engine["stage_ms"],
              engine["head_ms"], engine["final_ms"], real["call_ms"],
              real["per_stage_step_ms"]))
    t64 = results[64][0]
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": "{} cores {}".format(os.cpu_count(), platform.machine()),
        "threads": args.threads,
        "samples": int(len(y)),
        "staged_vs_monolithic_b1": round(t1["c_edgesdk_no_exit"] / t1["b_ort_monolithic"], 4),
        "staged_vs_monolithic_b64": round(t64["c_edgesdk_no_exit"] / t64["b_ort_monolithic"], 4),
        "early_exit_vs_monolithic_b1": round(t1["d_edgesdk_early_exit"] / t1["b_ort_monolithic"], 4),
        "early_exit_vs_monolithic_b64": round(t64["d_edgesdk_early_exit"] / t64["b_ort_monolithic"], 4),
        "pytorch_eager_vs_monolithic_b1": round(t1["a_pytorch_eager"] / t1["b_ort_monolithic"], 4),
        "monolithic_ms_b1": round(1e3 * t1["b_ort_monolithic"], 4),
        "accuracy_monolithic": round(acc_mono, 4),
        "accuracy_early_exit": round(acc_ee, 4),
        "accuracy_drop_points": round(100 * (acc_mono - acc_ee), 2),
        "exit_counts": exits.tolist(),
        "engine_stub_ms": {k: round(v, 5) for k, v in engine.items()},
        "engine_real_ms": {k: round(v, 5) for k, v in real.items()},
        "cpu": cpu(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
