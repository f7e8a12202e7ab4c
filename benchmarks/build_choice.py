"""Per-graph build choice from a measured profile vs all-FP32 and all-INT8, side by side.

On the trained sample model and real MNIST digits, in one run:
 1. convert with FP32 and INT8 (QDQ, per-channel, activation ranges from the calibration
    split) builds of every stage and head;
 2. profile every build of every graph at batch 1 on this machine into a profile database;
 3. convert again with --profile: each graph gets the build the table says is cheaper, if its
    top-1 agreement with FP32 holds (>= 99% at every exit);
 4. measure the whole model (no early exit) at batch 1 on the test split for the three
    settings (all FP32, all INT8, chosen) in interleaved rounds, and their accuracy.
The last line printed is one JSON object.
"""
import datetime
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from common import cpu, print_cpu, sample_parser


def full_model_ms(model, x):
    """Mean ms per sample at batch 1 with every stage run (the runtime's own timing)."""
    return float(np.mean([model.run(x[i:i + 1], early_exit=False).total_ms for i in range(len(x))]))


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per graph")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    args = parser.parse_args(argv)
    print_cpu()

    from data import PREPROCESSING
    from run import prepare
    from edgesdk.converters import convert
    from edgesdk.runtime import load_bundle, preprocess
    from edgesdk.runtime.profiler import profile_bundle

    splits, torch_model, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    spec = load_bundle(bundle).input_spec
    xc, yc = preprocess(splits["calibration"][0], spec), splits["calibration"][1]
    xt = preprocess(splits["test"][0], spec)[:args.samples]
    yt = splits["test"][1][:args.samples]
    tmp = tempfile.mkdtemp(prefix="edgesdk-build-choice-")
    try:
        kw = dict(preprocessing=PREPROCESSING, precisions=("fp32", "int8"),
                  calibration_data=(xc, yc), threads=args.threads, progress=False)
        both = os.path.join(tmp, "both.edgebundle")
        convert(torch_model, xc[:16], both, **kw)
        db = os.path.join(tmp, "profiles.sqlite")
        profile_bundle(both, [1], warmup=20, repeats=args.repeats, db=db, threads=args.threads,
                       progress=False)
        chosen_path = os.path.join(tmp, "chosen.edgebundle")
        report = convert(torch_model, xc[:16], chosen_path, profile=db, **kw)
        models = {"fp32": load_bundle(both, threads=args.threads),
                  "int8": load_bundle(both, threads=args.threads, builds="int8"),
                  "chosen": load_bundle(chosen_path, threads=args.threads)}
        for m in models.values():
            full_model_ms(m, xt[:50])  # warm-up
        ms = {k: [] for k in models}
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(list(models)))
            for k in order:
                ms[k].append(full_model_ms(models[k], xt))
        accuracy = {k: float((m.run(xt, early_exit=False).labels == yt).mean())
                    for k, m in models.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in ms.items()}
    builds = report.choices["builds"]
    print("\nedgesdk build-choice benchmark: {} MNIST test images, batch 1, whole model, {} "
          "threads, {} rounds".format(len(yt), args.threads, args.rounds))
    print("chosen builds: {}".format(", ".join("{}={}".format(g, b.split()[1])
                                              for g, b in builds.items())))
    for k in models:
        print("{:<7} {:.3f} ms/image ({:.3f}x fp32), accuracy {:.2%}".format(
            k, med[k], med[k] / med["fp32"], accuracy[k]))
    print(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": "{} cores".format(os.cpu_count()),
        **cpu(),
        "threads": args.threads, "samples": int(len(yt)),
        "int8_graphs": sum(b.endswith("int8") for b in builds.values()), "graphs": len(builds),
        "chosen_vs_fp32": round(med["chosen"] / med["fp32"], 4),
        "int8_vs_fp32": round(med["int8"] / med["fp32"], 4),
        "accuracy_fp32": accuracy["fp32"], "accuracy_int8": accuracy["int8"],
        "accuracy_chosen": accuracy["chosen"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
