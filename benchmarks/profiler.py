"""The feedback loop measured: profile -> cost model -> budgeted calibration -> reality.

Three multi-exit models, each converted and calibrated, then ``--runs`` repeats of:
 1. profile every stage, head and the engine's own work at batch 1 into a new profile store
    (the profiler's defaults: timed inside real runs, at least 200 rounds and 1 s);
 2. cost model vs reality: the mean latency predicted for the test split's early-exit run at
    the calibrated thresholds (the test split's own exits x the measured costs), with every
    per-graph statistic the profiler stores, vs the measured mean wall time around
    ``model.run()`` at batch 1 over the test split (repeated to at least 1 s of calls);
 3. calibrate with ``--budget-latency-ms`` halfway between the predicted latency of every
    sample leaving at exit 0 and of the full model (calibration split), then measure on the
    test split: measured <= budget?
Models: the sample (``make demo``'s MNIST ResNet, 100 M MACs), and the small CNNs of
``benchmarks/calibration.py`` for scikit-learn's ``load_digits`` (8x8) and scikit-image's
``lfw_subset`` (25x25), where the engine's own work is a large share of a call.
Also: profiler_overhead, a graph's latency with the energy sampling thread running vs not (no
power sensor here: a file-backed reader sampled like a sysfs rail, said in the output).
The last line printed is one JSON object.
"""
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from common import cpu, print_cpu, sample_parser

GOAL = 0.05        # |predicted - measured| / measured, every repeat
MEASURE_S = 1.0    # at least this long of measured calls per figure


class FileRail(object):
    """Reads a number from a file, as the sysfs power readers do."""

    kind, wrap_j, name, rail, total = "power", None, "file-backed", "stand-in", True

    def __init__(self, path):
        self.path = path

    def read(self):
        with open(self.path) as f:
            return int(f.read()) / 1000.0




def mean_latency(model, x, seconds=MEASURE_S):
    """Mean wall time (ms) around ``model.run()`` per sample at batch 1, over ``x`` repeated
    until at least ``seconds`` of calls (whole passes, so every sample counts alike)."""
    total, calls, clock = 0.0, 0, time.perf_counter
    while calls == 0 or total < seconds:
        for i in range(len(x)):
            xi = x[i:i + 1]
            t0 = clock()
            model.run(xi)
            total += clock() - t0
        calls += len(x)
    return total * 1000.0 / calls


def sampling_overhead(graph, tensors, sensor, calls, rounds=10):
    """Latency with the sampling thread on / off, interleaved rounds; returns the ratio.

    ``calls`` per window: enough for about one second, the profiler's energy window."""
    from edgesdk.runtime.power.meter import EnergyMeter
    on = off = 0.0
    for r in range(rounds):
        for sampling in ((True, False) if r % 2 else (False, True)):
            t0 = time.perf_counter()
            if sampling:
                with EnergyMeter(sensor):
                    for _ in range(calls):
                        graph.run(tensors)
                on += time.perf_counter() - t0
            else:
                for _ in range(calls):
                    graph.run(tensors)
                off += time.perf_counter() - t0
    return on / off


def mnist_bundle(args, work):
    """The sample's calibrated bundle (copied) and its calibration / test splits."""
    from run import prepare
    from edgesdk.runtime import load_bundle, preprocess
    splits, _, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    path = os.path.join(work, "mnist.edgebundle")
    shutil.copytree(bundle, path)
    spec = load_bundle(path, threads=args.threads).input_spec
    xc, yc = preprocess(splits["calibration"][0], spec), splits["calibration"][1]
    xt, yt = preprocess(splits["test"][0], spec)[:args.samples], splits["test"][1][:args.samples]
    return path, (xc, yc), (xt, yt)


def small_bundle(name, args, work):
    """A small 3-exit CNN trained on ``name`` (benchmarks/calibration.py's data, network and
    training), converted and calibrated on half of the held-out pool; the other half tests."""
    import torch
    from calibration import STEPS, load, network, train
    from edgesdk.converters import calibrate, convert
    torch.set_num_threads(args.threads)
    x, y, n_train = load(name)
    pool_x, pool_y = x[n_train:], y[n_train:]
    half = len(pool_y) // 2
    cal, test = (pool_x[:half], pool_y[:half]), (pool_x[half:], pool_y[half:])
    path = os.path.join(work, name + ".edgebundle")
    # Reused from the work folder when trained with the same steps (like the sample's weights).
    cached = os.path.join(args.workdir, "profiler-bench-{}-{}.edgebundle".format(name, STEPS[name]))
    if not os.path.isdir(cached):
        net = train(network(x.shape[-1], int(y.max()) + 1), x[:n_train], y[:n_train],
                    STEPS[name], flips=name == "lfw")
        convert(net, x[:8], path, progress=False, threads=args.threads)
        # Point estimates (no certificate: the lfw pool is 120 faces): any thresholds that
        # spread the samples over the exits serve the cost model check.
        calibrate(path, cal[0], cal[1], max_accuracy_drop=1.0, confidence=0.0,
                  threads=args.threads, progress=False)
        os.makedirs(args.workdir, exist_ok=True)
        shutil.copytree(path, cached + ".tmp")
        os.rename(cached + ".tmp", cached)
    else:
        shutil.copytree(cached, path)
    return path, cal, test


def one_repeat(path, cal, test, args, tmp, statistics):
    """Profile, predict with each statistic, measure; then a latency-budget calibration."""
    from edgesdk.converters import calibrate, simulator_for
    from edgesdk.converters.cost_model import cost_table
    from edgesdk.profiles import COST_STATISTIC, ProfileRecorder
    from edgesdk.runtime import load_bundle
    from edgesdk.runtime.profiler import InterleavedRuns, exit_mix, profile_graphs
    model = load_bundle(path, threads=args.threads)
    xt, yt = test
    mean_latency(model, xt[:50], seconds=0.2)  # warm-up
    db = os.path.join(tmp, "profiles-{}.sqlite".format(time.time()))
    recorder = ProfileRecorder(db, model.bundle.manifest)
    # The real runs are timed between the profiler's rounds (same load); and once more after.
    live = InterleavedRuns(model, xt)
    floors = {k: v for k, v in (("repeats", args.repeats), ("min_seconds", args.min_seconds))
              if v is not None}
    rows = profile_graphs(model, [1], progress=recorder, between=live, mix=exit_mix(model, xt),
                          **floors)
    recorder.close()
    measured = live.finish()
    after = mean_latency(model, xt)
    probs = model.exit_probabilities(xt)
    predicted, tables = {}, {}
    for s in statistics:
        tables[s] = cost_table(db, model.bundle.manifest, metric=s)
        predicted[s] = simulator_for(model, probs, yt, costs=tables[s]).evaluate(
            model.thresholds).mean_cost
    table = tables[COST_STATISTIC]
    sim = simulator_for(model, model.exit_probabilities(cal[0]), cal[1], costs=table)
    cheapest = sim.evaluate([-np.inf if sim.policy.higher_is_confident else np.inf] *
                            (sim.k - 1) + [None]).mean_cost
    # Halfway between the cheapest and the dearest of "all leave at exit 0" and "exits off"
    # (on the tiny models the engine's work can make exit 0 dearer than the full model).
    budget = 0.5 * (cheapest + sim.full_cost)
    budgeted = path.replace(".edgebundle", "-budget.edgebundle")
    shutil.rmtree(budgeted, ignore_errors=True)
    shutil.copytree(path, budgeted)
    calibrate(budgeted, cal[0], cal[1], profile=db, budget_latency_ms=budget,
              threads=args.threads, progress=False)
    bmodel = load_bundle(budgeted, threads=args.threads)
    at_budget = mean_latency(bmodel, xt)
    acc = float((np.concatenate([bmodel.run(xt[i:i + 256]).labels
                                 for i in range(0, len(xt), 256)]) == yt).mean())
    exits = np.bincount([model.run(xt[i:i + 1]).exit_index[0] for i in range(len(xt))],
                        minlength=model.num_exits)
    return {"measured_ms": measured, "predicted_ms": predicted, "measured_after_ms": after,
            "error": {s: (p - measured) / measured for s, p in predicted.items()},
            "error_after": (predicted[COST_STATISTIC] - after) / after,
            "engine": table.engine, "noisy": table.noisy, "stage_ms": table.stage,
            "head_ms": table.head, "exit_counts": exits.tolist(),
            "budget_ms": budget, "measured_at_budget_ms": at_budget,
            "budget_met": at_budget / budget, "accuracy_at_budget": acc,
            "rows": len(rows)}


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="repeats of profile + check per model")
    parser.add_argument("--repeats", type=int, default=None,
                        help="profiler rounds (default: the profiler's, 200 and 1 s)")
    parser.add_argument("--min-seconds", type=float, default=None,
                        help="profiler time floor (default: the profiler's)")
    parser.add_argument("--models", default="mnist,digits,lfw")
    args = parser.parse_args(argv)
    print_cpu()

    from edgesdk.profiles import COST_STATISTIC
    from edgesdk.runtime import load_bundle
    from edgesdk.runtime.profiler import graph_inputs
    from edgesdk.runtime.timing import STATISTICS
    models = args.models.split(",")
    tmp = tempfile.mkdtemp(prefix="edgesdk-profiler-bench-")
    results, sizes = {}, {}
    try:
        for name in models:
            path, cal, test = (mnist_bundle(args, tmp) if name == "mnist" else
                               small_bundle(name, args, tmp))
            results[name] = []
            sizes[name] = len(test[1])
            for r in range(args.runs):
                res = one_repeat(path, cal, test, args, tmp, STATISTICS)
                results[name].append(res)
                e = res["engine"]
                print("{} run {}: measured {:.4f} ms, predicted ({}) {:.4f} ms, error {:+.2%} "
                      "(measured after the profile: {:.4f} ms, {:+.2%}); budget {:.4f} ms -> "
                      "measured {:.4f} ms ({:.3f}); engine call/stage/head/final "
                      "{:.4f}/{:.4f}/{:.4f}/{:.4f} ms; noisy rows {}".format(
                          name, r + 1, res["measured_ms"], COST_STATISTIC,
                          res["predicted_ms"][COST_STATISTIC], res["error"][COST_STATISTIC],
                          res["measured_after_ms"], res["error_after"], res["budget_ms"],
                          res["measured_at_budget_ms"], res["budget_met"], e["call"], e["stage"],
                          e["head"], e["final"], len(res["noisy"])), flush=True)
        # The sampling thread's overhead on the sample's costliest stage.
        rail = os.path.join(tmp, "in_power0_input")
        with open(rail, "w") as f:
            f.write("4870\n")
        first = models[0]
        model = load_bundle(os.path.join(tmp, first + ".edgebundle"), threads=args.threads)
        stage_ms = results[first][-1]["stage_ms"]
        costliest = int(np.argmax(stage_ms))
        _, _, graph, tensors = graph_inputs(model, 1)[2 * costliest]  # stage k sits at 2k
        overhead = sampling_overhead(graph, tensors, FileRail(rail),
                                     max(10, int(1000.0 / stage_ms[costliest])))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    info = cpu()
    print("\nedgesdk profiler benchmark: batch 1, {} threads, {} runs per model; CPU {} (avx2 {}, "
          "avx512_vnni {})".format(args.threads, args.runs, info["cpu"], info["avx2"],
                                   info["avx512_vnni"]))
    print("\nerror of the predicted mean latency per statistic (worst |error| over the runs; "
          "goal <= {:.0%} in every run):".format(GOAL))
    print("{:<18}".format("statistic") + "".join("{:>12}".format(m) for m in models))
    worst = {}
    for s in STATISTICS:
        worst[s] = {m: max(abs(r["error"][s]) for r in results[m]) for m in models}
        print("{:<18}".format(s) + "".join("{:>11.1%} ".format(worst[s][m]) for m in models))
    best = min(STATISTICS, key=lambda s: max(worst[s].values()))
    print("best statistic here: {} (the cost model uses {})".format(best, COST_STATISTIC))
    print("\n{:<8}{:>12}{:>12}{:>12}{:>14}{:>12}".format(
        "model", "measured", "predicted", "error", "budget met", "engine/call"))
    for m in models:
        for r in results[m]:
            e = r["engine"]
            print("{:<8}{:>12.4f}{:>12.4f}{:>+12.2%}{:>14.3f}{:>12.4f}".format(
                m, r["measured_ms"], r["predicted_ms"][COST_STATISTIC],
                r["error"][COST_STATISTIC], r["budget_met"], e["call"]))
    print("profiler sampling thread overhead: {:.4f} (file-backed stand-in reader: no power "
          "sensor on this machine)".format(overhead))
    errors = [abs(r["error"][COST_STATISTIC]) for m in models for r in results[m]]
    met = [r["budget_met"] for m in models for r in results[m]]
    mn = results.get("mnist", results[models[0]])
    print(json.dumps({
        "date": datetime.date.today().isoformat(),
        "machine": "{} cores {}".format(os.cpu_count(), platform.machine()), "cpu": info,
        "threads": args.threads, "runs": args.runs, "statistic": COST_STATISTIC,
        "samples": sizes[models[0]], "test_samples": sizes,
        "best_statistic": best,
        "cost_model_error": round(max(errors), 4),
        "cost_model_error_per_model": {m: [round(r["error"][COST_STATISTIC], 4)
                                           for r in results[m]] for m in models},
        "worst_error_per_statistic": {s: {m: round(v, 4) for m, v in worst[s].items()}
                                      for s in STATISTICS},
        "cost_model_goal_met": bool(max(errors) <= GOAL),
        "budget_met": round(max(met), 4),
        "budget_goal_met": bool(max(met) <= 1.0),
        "accuracy_at_budget": round(mn[-1]["accuracy_at_budget"], 4),
        "engine_ms": {m: {k: round(v, 5) for k, v in results[m][-1]["engine"].items()}
                      for m in models},
        "measured_ms": {m: [round(r["measured_ms"], 4) for r in results[m]] for m in models},
        "profiler_overhead": round(overhead, 4), "sensor": "none (file-backed stand-in)",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
