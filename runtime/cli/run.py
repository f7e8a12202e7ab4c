"""Run a bundle stage by stage with early exits over an .npz (x, optional y) or image folder."""
import json

import numpy as np

from edgesdk.errors import InputError
from edgesdk.runtime.cli.options import (add_builds_argument, add_providers_argument,
                                         add_trusted_key_argument, builds_option,
                                         parse_thresholds, print_builds)
from edgesdk.table import format_table

MAX_ROWS = 20


def add_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle")
    p.add_argument("input", help=".npz with 'x' (and optional 'y' labels) or a folder of images")
    p.add_argument("--batch-size", type=int, default=1, help="samples per call (default 1)")
    p.add_argument("--thresholds", help="per-exit thresholds, comma separated; 'none' disables "
                                        "an exit (default: the bundle's)")
    p.add_argument("--no-early-exit", action="store_true", help="run every stage for every sample")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_builds_argument(p, "run")
    add_providers_argument(p)
    add_trusted_key_argument(p)
    p.add_argument("--memory-limit-mb", type=float,
                   help="refuse a bundle, input file or batch needing more (default: the smaller "
                        "of the target's declared memory and this machine's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args):
    """Run a bundle over an input file or folder; print per-sample results or a summary."""
    from edgesdk.progress import Progress
    from edgesdk.runtime.datafiles import load_inputs
    from edgesdk.runtime.cascade import is_cascade
    from edgesdk.runtime.engine import load_bundle
    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    if is_cascade(args.bundle):
        return _run_cascade(args)
    request, fallback = builds_option(args)
    model = load_bundle(args.bundle, threads=args.threads, builds=request, fallback=fallback,
                        memory_limit_mb=args.memory_limit_mb, trusted_keys=args.trusted_key,
                        providers=args.providers)
    x, y, names = load_inputs(args.input, model.input_spec, max_bytes=model.memory.limit)
    thr = model.resolve_thresholds(parse_thresholds(args.thresholds))
    parts = []
    with Progress(len(x), "running", enabled=not args.json) as bar:
        for i in range(0, len(x), args.batch_size):
            parts.append(model.run(x[i:i + args.batch_size], thr, not args.no_early_exit))
            bar.update(len(parts[-1]))
    labels = np.concatenate([r.labels for r in parts]) if parts else np.zeros(0, np.int64)
    exits = np.concatenate([r.exit_index for r in parts]) if parts else np.zeros(0, np.int64)
    conf = np.concatenate([r.probabilities.max(axis=1) for r in parts]) if parts else np.zeros(0)
    call_ms = np.array([r.total_ms for r in parts])
    summary = {
        "samples": int(len(x)), "batch_size": args.batch_size,
        "early_exit": not args.no_early_exit,
        "thresholds": thr if not args.no_early_exit else None,
        "exit_counts": np.bincount(exits, minlength=model.num_exits).tolist(),
        "mean_ms_per_sample": float(call_ms.sum() / max(len(x), 1)),
        "accuracy": float((labels == y).mean()) if y is not None and len(y) else None,
        "builds": model.ran,
    }
    names_ = model.bundle.manifest.get("class_names")
    records = []
    for i in range(len(x)):
        rec = {"sample": names[i], "label": int(labels[i]), "exit": int(exits[i]),
               "confidence": round(float(conf[i]), 6)}
        if names_:
            rec["class"] = names_[labels[i]]
        if y is not None:
            rec["true_label"] = int(y[i])
        records.append(rec)
    if args.json:
        print(json.dumps({"summary": summary, "samples": records}))
        return 0
    if records and len(records) <= MAX_ROWS:
        keys = list(records[0])
        print(format_table(keys, [[r[k] for k in keys] for r in records]))
        print()
    rows = [["exit {}".format(k), c, "{:.1%}".format(c / max(len(x), 1))]
            for k, c in enumerate(summary["exit_counts"])]
    print(format_table(["exit", "samples", "share"], rows))
    print("\nsamples: {}  mean latency: {:.3f} ms/sample (batch {})".format(
        len(x), summary["mean_ms_per_sample"], args.batch_size))
    if summary["accuracy"] is not None:
        print("accuracy: {:.2%}".format(summary["accuracy"]))
    print_builds(model.ran)
    return 0


def _run_cascade(args):
    """A resolution cascade over raw images: the level each sample left at."""
    from edgesdk.runtime.cascade import load_cascade, raw_inputs
    if args.builds or args.providers or args.no_early_exit:
        raise InputError("a cascade runs each level's selected builds with its thresholds: "
                         "--builds, --providers and --no-early-exit do not apply")
    cascade = load_cascade(args.bundle, threads=args.threads)
    if args.trusted_key:
        from edgesdk.signing import check_signature
        check_signature(cascade.bundle.manifest, args.trusted_key, cascade.bundle.root)
    raw, y, names = raw_inputs(args.input, cascade)
    thr = parse_thresholds(args.thresholds)
    thr = [None if t is None else float(t) for t in thr] if thr is not None else None
    parts = [cascade.run(raw[i:i + args.batch_size], thr)
             for i in range(0, len(raw), args.batch_size)]
    levels = np.concatenate([r.exit_index for r in parts]) if parts else np.zeros(0, np.int64)
    labels = np.concatenate([r.labels for r in parts]) if parts else np.zeros(0, np.int64)
    summary = {"samples": int(len(raw)), "batch_size": args.batch_size, "levels": cascade.ids,
               "level_counts": np.bincount(levels, minlength=len(cascade.ids)).tolist(),
               "mean_ms_per_sample": float(sum(r.total_ms for r in parts) / max(len(raw), 1)),
               "accuracy": float((labels == y).mean()) if y is not None and len(y) else None,
               "builds": cascade.ran}
    records = [dict({"sample": names[i], "label": int(labels[i]),
                     "level": cascade.ids[levels[i]]},
                    **({"true_label": int(y[i])} if y is not None else {}))
               for i in range(len(raw))]
    if args.json:
        print(json.dumps({"summary": summary, "samples": records}))
        return 0
    if records and len(records) <= MAX_ROWS:
        keys = list(records[0])
        print(format_table(keys, [[r[k] for k in keys] for r in records]) + "\n")
    print(format_table(["level", "resolution", "samples", "share"],
                       [[lid, "{}x{}".format(*res), c, "{:.1%}".format(c / max(len(raw), 1))]
                        for lid, res, c in zip(cascade.ids, cascade.resolutions,
                                               summary["level_counts"])]))
    print("\nsamples: {}  mean latency: {:.3f} ms/sample (batch {})".format(
        len(raw), summary["mean_ms_per_sample"], args.batch_size))
    if summary["accuracy"] is not None:
        print("accuracy: {:.2%}".format(summary["accuracy"]))
    return 0
