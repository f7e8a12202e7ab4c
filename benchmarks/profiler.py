"""The feedback loop measured: profile -> cost model -> budgeted calibration -> reality.

On the trained sample model and real MNIST digits, in one run:
 1. profile every stage and head at batch 1 into a temporary profile database;
 2. cost model: predicted mean latency of the early-exit run on the test split (exit
    fractions x measured stage/head costs) vs the measured mean latency -> cost_model_error;
 3. calibrate with --budget-latency-ms at 60% of the full model's measured latency (on the
    calibration split), then measure on the test split -> budget_met (measured / budget) and
    accuracy_at_budget;
 4. profiler_overhead: a graph's latency with the energy sampling thread running vs not. This
    machine has no power sensor, so the thread samples a file-backed reader at the same 5 ms
    period a sysfs rail would be read at (said in the output).
The last line printed is one JSON object.
"""
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from common import sample_parser


class FileRail(object):
    """Reads a number from a file, as the sysfs power readers do."""

    kind, wrap_j, name, rail, total = "power", None, "file-backed", "stand-in", True

    def __init__(self, path):
        self.path = path

    def read(self):
        with open(self.path) as f:
            return int(f.read()) / 1000.0


def mean_latency(model, x, repeats=1):
    """Mean ms per sample over ``x`` at batch 1 (the runtime's own per-call timing)."""
    total = 0.0
    for _ in range(repeats):
        for i in range(len(x)):
            total += model.run(x[i:i + 1]).total_ms
    return total / (repeats * len(x))


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


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per graph")
    args = parser.parse_args(argv)

    from run import prepare
    from edgesdk.converters import calibrate, simulator_for
    from edgesdk.converters.cost_model import cost_table
    from edgesdk.profiles import ProfileRecorder
    from edgesdk.runtime import load_bundle, preprocess
    from edgesdk.runtime.profiler import graph_inputs, profile_graphs

    splits, _, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    tmp = tempfile.mkdtemp(prefix="edgesdk-profiler-bench-")
    try:
        work = os.path.join(tmp, "m.edgebundle")
        shutil.copytree(bundle, work)
        model = load_bundle(work, threads=args.threads)
        xt = preprocess(splits["test"][0], model.input_spec)[:args.samples]
        yt = splits["test"][1][:args.samples]
        xc = preprocess(splits["calibration"][0], model.input_spec)
        yc = splits["calibration"][1]
        mean_latency(model, xt[:100])  # warm-up

        db = os.path.join(tmp, "profiles.sqlite")
        recorder = ProfileRecorder(db, model.bundle.manifest)
        profile_graphs(model, [1], warmup=20, repeats=args.repeats, progress=recorder)
        recorder.close()
        table = cost_table(db, model.bundle.manifest)

        # 2. cost model vs reality at the sample's calibrated thresholds
        sim = simulator_for(model, model.exit_probabilities(xt), yt, costs=table)
        predicted = sim.evaluate(model.thresholds).mean_cost
        measured = mean_latency(model, xt)
        full_measured = float(np.mean([model.run(xt[i:i + 1], early_exit=False).total_ms
                                       for i in range(len(xt))]))

        # 3. budget at 60% of the full model's measured latency
        budget = 0.6 * full_measured
        res = calibrate(work, xc, yc, profile=db, budget_latency_ms=budget, threads=args.threads,
                        progress=False)
        model = load_bundle(work, threads=args.threads)
        at_budget = mean_latency(model, xt)
        acc_budget = float((np.concatenate([model.run(xt[i:i + 256]).labels
                                            for i in range(0, len(xt), 256)]) == yt).mean())

        # 4. sampling overhead on the costliest stage
        rail = os.path.join(tmp, "in_power0_input")
        with open(rail, "w") as f:
            f.write("4870\n")
        costliest = int(np.argmax(table.stage))
        _, _, graph, tensors = graph_inputs(model, 1)[2 * costliest]  # stage k sits at 2k
        calls = max(10, int(1000.0 / table.stage[costliest]))
        overhead = sampling_overhead(graph, tensors, FileRail(rail), calls)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nedgesdk profiler benchmark: {} MNIST test images, batch 1, {} threads".format(
        len(yt), args.threads))
    print("measured per-sample costs (ms): stages {}, heads {}".format(
        [round(v, 3) for v in table.stage], [round(v, 3) for v in table.head]))
    print("cost model at the sample's thresholds: predicted {:.3f} ms, measured {:.3f} ms "
          "(error {:+.1%})".format(predicted, measured, (predicted - measured) / measured))
    print("budget {:.3f} ms (60% of the full model's measured {:.3f} ms): thresholds {}, measured "
          "{:.3f} ms, accuracy {:.2%}".format(budget, full_measured,
                                               [None if t is None else round(t, 4)
                                                for t in res.point.thresholds], at_budget, acc_budget))
    print("sampling thread overhead: {:.4f} (file-backed stand-in reader: no power sensor "
          "on this machine)".format(overhead))
    print(json.dumps({
        "date": datetime.date.today().isoformat(),
        "machine": "{} cores".format(os.cpu_count()), "threads": args.threads,
        "samples": int(len(yt)),
        "cost_model_error": round(abs(predicted - measured) / measured, 4),
        "predicted_ms": round(predicted, 4), "measured_ms": round(measured, 4),
        "budget_ms": round(budget, 4), "budget_met": round(at_budget / budget, 4),
        "accuracy_at_budget": round(acc_budget, 4),
        "profiler_overhead": round(overhead, 4), "sensor": "none (file-backed stand-in)",
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
