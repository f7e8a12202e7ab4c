"""TVM builds of the sample model vs ONNX Runtime on this machine: untuned, tuned, and the
aarch64 build's error under emulation, side by side in one run.

On the trained sample model (4 stages, 4 exit heads) at batch 1 with the same thread count:
 1. build every graph with TVM for this CPU, untuned (TVM's default schedules);
 2. tune with MetaSchedule into a database (the committed one in benchmarks/tvm_tuning is
    reused and only extended to --trials per workload; its recorded tuning time counts), and
    build again with it;
 3. time every stage and head alone, and the whole model (no early exit), for ONNX Runtime,
    TVM untuned and TVM tuned in interleaved rounds;
 4. build for the Jetson TX2's CPU (aarch64), run it under qemu-user and compare every exit
    with ONNX Runtime.
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

from common import ROOT, cpu, print_cpu, sample_parser

# This script's folder is first on sys.path, and this file is tvm.py: take the folder off so
# that `import tvm` finds Apache TVM, not this script.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

GOAL = 1.5  # tuned TVM within 1.5x of ONNX Runtime (issue #5)


def per_call_ms(graph, inputs, repeats):
    """Median ms of one executor call."""
    graph.run(inputs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        graph.run(inputs)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000.0


def whole_model_ms(model, x):
    """Mean ms per sample at batch 1 with every stage run."""
    return float(np.mean([model.run(x[i:i + 1], early_exit=False).total_ms for i in range(len(x))]))


def default_database():
    """The committed database folder for this machine's CPU (as LLVM names it)."""
    from tvm.target import codegen
    return os.path.join(ROOT, "benchmarks", "tvm_tuning", "host-" + codegen.llvm_get_system_cpu())


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per graph and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--trials", type=int, default=24,
                        help="tuning trials per workload (0: use the database as it is)")
    parser.add_argument("--tuning-db", help="database folder (default: the committed one for "
                                            "this CPU, benchmarks/tvm_tuning/host-CPU)")
    args = parser.parse_args(argv)
    print_cpu()

    from run import prepare
    from edgesdk.manifest import graph_entries
    from edgesdk.converters.tvm.build import build_tvm, resolve_target
    from edgesdk.converters.tvm.emulation import check_emulated
    from edgesdk.converters.tvm.tune import PROGRESS_FILE, check_database_target, tune_bundle
    from edgesdk.errors import BuildError
    from edgesdk.runtime import load_bundle, preprocess
    from edgesdk.targets import get_target

    splits, _, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    spec = load_bundle(bundle).input_spec
    xt = preprocess(splits["test"][0], spec)[:args.samples]
    db = args.tuning_db or default_database()
    target = resolve_target(get_target("host").processor("cpu"))
    tmp = tempfile.mkdtemp(prefix="edgesdk-tvm-bench-")
    try:
        paths = {k: os.path.join(tmp, k + ".edgebundle") for k in ("untuned", "tuned")}
        for p in paths.values():
            shutil.copytree(bundle, p)
        build_tvm(paths["untuned"], "host", "cpu", batch=1, progress=False)
        tuned, tuning = True, None
        try:
            if os.path.isdir(db):
                check_database_target(db, target)
            if args.trials > 0:
                tuning = tune_bundle(paths["tuned"], "host", "cpu", trials=args.trials,
                                     database=db, progress=True)
            elif os.path.isdir(db):
                build_tvm(paths["tuned"], "host", "cpu", batch=1, database=db, progress=False)
            else:
                tuned = False
        except BuildError as exc:  # a database tuned on another CPU: say so, time no tuned column
            print("no tuned build: {}".format(exc), file=sys.stderr)
            tuned = False
        state = json.load(open(os.path.join(db, PROGRESS_FILE))) if tuned else {}
        tuning_minutes = state.get("seconds", 0.0) / 60.0 if tuned else None

        models = {"ort": load_bundle(bundle, threads=args.threads, builds=("onnx", "fp32")),
                  "tvm_untuned": load_bundle(paths["untuned"], threads=args.threads, builds="tvm")}
        if tuned:
            models["tvm_tuned"] = load_bundle(paths["tuned"], threads=args.threads, builds="tvm")
        m = models["ort"].bundle.manifest
        graph_ms = {k: {} for k in models}
        total_ms = {k: [] for k in models}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(list(models)))
            for k in order:
                model = models[k]
                state_in = [xt[:1]]
                for i, (st, ex) in enumerate(zip(m["stages"], m["exits"])):
                    graph_ms[k].setdefault(st["id"], []).append(
                        per_call_ms(model.stages[i], state_in, args.repeats))
                    state_in = model.stages[i].run(state_in)
                    graph_ms[k].setdefault(ex["id"], []).append(
                        per_call_ms(model.heads[i], state_in, args.repeats))
                total_ms[k].append(whole_model_ms(model, xt))
        med = {k: {g: float(np.median(v)) for g, v in d.items()} for k, d in graph_ms.items()}
        whole = {k: float(np.median(v)) for k, v in total_ms.items()}
        agree = {k: float((models[k].run(xt, early_exit=False).labels ==
                           models["ort"].run(xt, early_exit=False).labels).mean()) for k in models}

        build_tvm(paths["untuned"], "jetson-tx2", "cpu", batch=None, progress=False)
        emulated = check_emulated(paths["untuned"], "jetson-tx2-cpu")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ids = [e["id"] for e in graph_entries(m)]
    print("\nedgesdk TVM benchmark: sample model, batch 1, {} threads, {} rounds, {} test images "
          "(whole model), target {}".format(args.threads, args.rounds, len(xt), json.dumps(target)))
    if tuning is not None:
        print("tuning this run: {} of {} workloads, {:.1f} min; database {} ({} trials, {:.1f} "
              "min in all)".format(tuning["tuned"], tuning["tasks"], tuning["seconds"] / 60.0,
                                  db, tuning["trials"], tuning_minutes))
    print("{:<8} {:>9} {:>12} {:>10} {:>12} {:>10}".format(
        "graph", "ORT ms", "TVM untuned", "x ORT", "TVM tuned", "x ORT"))
    for g in ids + ["whole"]:
        o = whole["ort"] if g == "whole" else med["ort"][g]
        u = whole["tvm_untuned"] if g == "whole" else med["tvm_untuned"][g]
        t = (whole["tvm_tuned"] if g == "whole" else med["tvm_tuned"][g]) if tuned else None
        print("{:<8} {:>9.4f} {:>12.4f} {:>10.2f} {:>12} {:>10}".format(
            g, o, u, u / o, "-" if t is None else "{:.4f}".format(t),
            "-" if t is None else "{:.2f}".format(t / o)))
    print("aarch64 (jetson-tx2 cpu) under qemu vs ONNX Runtime, {} reference samples: max abs "
          "error per exit {}".format(emulated["samples"], ", ".join(
              "{:.2e}".format(e) for e in emulated["max_abs_error"])))
    ratio = whole["tvm_tuned"] / whole["ort"] if tuned else None
    print(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": "{} cores".format(os.cpu_count()),
        **cpu(),
        "threads": args.threads, "samples": int(len(xt)), "target_mcpu": target.get("mcpu"),
        "tvm_untuned_vs_ort": round(whole["tvm_untuned"] / whole["ort"], 3),
        "tvm_tuned_vs_ort": None if ratio is None else round(ratio, 3),
        "tuning_minutes": None if tuning_minutes is None else round(tuning_minutes, 1),
        "tuning_trials_per_workload": args.trials if tuned else None,
        "goal_tuned_within_1_5x": None if ratio is None else ratio <= GOAL,
        "per_graph_tuned_vs_ort": {g: round(med["tvm_tuned"][g] / med["ort"][g], 3)
                                   for g in ids} if tuned else None,
        "top1_agreement_with_ort": agree,
        "aarch64_emulated_max_abs_error": max(emulated["max_abs_error"]),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
