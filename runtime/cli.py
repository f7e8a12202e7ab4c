"""`run`, `validate`, `profile` and `build-engines`: the device-side commands.

The host CLI (`edgesdk run`, `edgesdk validate`) and the standalone runtime
(`python3 edgesdk-runtime.pyz run ...`) both use these, so a board without the host SDK
behaves exactly like the host. Python 3.6 compatible.
"""
import argparse
import json
import os
import sys
import traceback
import warnings

import numpy as np

from edgesdk.errors import EdgeSDKError, InputError, InternalError
from edgesdk.table import format_table

MAX_ROWS = 20


def _thresholds(text):
    if text is None:
        return None
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        out.append(None if part in ("none", "off", "-") else part)
    return out


def add_run_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle")
    p.add_argument("input", help=".npz with 'x' (and optional 'y' labels) or a folder of images")
    p.add_argument("--batch-size", type=int, default=1, help="samples per call (default 1)")
    p.add_argument("--thresholds", help="per-exit thresholds, comma separated; 'none' disables "
                                        "an exit (default: the bundle's)")
    p.add_argument("--no-early-exit", action="store_true", help="run every stage for every sample")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_builds_argument(p, "run")
    p.add_argument("--memory-limit-mb", type=float,
                   help="refuse a bundle, input file or batch needing more (default: the smaller "
                        "of the target's declared memory and this machine's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_builds_argument(p, verb):
    """``--builds``, as run and validate take it."""
    p.add_argument("--builds", type=_build_request, metavar="BUILD[,fallback]",
                   help="{} other builds than the selected ones: a precision (int8), a format "
                        "(tvm) or FORMAT:PRECISION (onnx:fp32). A graph without that build is "
                        "an error, unless ',fallback' is added (it then uses its selected "
                        "build)".format(verb))


def _build_request(text):
    from edgesdk.runtime.build_select import parse_request
    try:
        return parse_request(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _builds(args):
    """``(request, fallback)`` from ``--builds`` (``(None, False)`` without it)."""
    return args.builds if args.builds else (None, False)


def print_builds(ran):
    """One line per distinct build: which graphs ran with it."""
    from edgesdk.runtime.build_select import build_name
    groups = {}
    for gid, b in ran.items():
        groups.setdefault(build_name(b), []).append(gid)
    for name, gids in sorted(groups.items()):
        print("builds run: {}: {}".format(name, ", ".join(gids)))


def cmd_run(args):
    """Run a bundle over an input file or folder; print per-sample results or a summary."""
    from edgesdk.progress import Progress
    from edgesdk.runtime.datafiles import load_inputs
    from edgesdk.runtime.engine import load_bundle
    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    request, fallback = _builds(args)
    model = load_bundle(args.bundle, threads=args.threads, builds=request, fallback=fallback,
                        memory_limit_mb=args.memory_limit_mb)
    x, y, names = load_inputs(args.input, model.input_spec, max_bytes=model.memory.limit)
    thr = model.resolve_thresholds(_thresholds(args.thresholds))
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


def add_validate_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle")
    p.add_argument("--check", action="store_true",
                   help="also run the reference inputs and compare every exit's outputs")
    add_builds_argument(p, "check")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_validate(args):
    """Verify the manifest and every file hash; with --check, the reference outputs too."""
    from edgesdk.bundle import read_bundle
    from edgesdk.errors import IntegrityError
    bundle = read_bundle(args.bundle)
    out = {"bundle": bundle.root, "files": len(bundle.manifest["files"]), "hashes": "ok"}
    if args.check:
        from edgesdk.runtime.engine import EdgeModel
        from edgesdk.runtime.reference import check_reference
        request, fallback = _builds(args)
        out["reference"] = check_reference(EdgeModel(bundle, builds=request, fallback=fallback))
    elif args.builds:
        raise InputError("--builds chooses the builds --check runs: add --check")
    if args.json:
        print(json.dumps(out))
    else:
        print("{}: manifest and {} file hashes ok".format(bundle.root, out["files"]))
        if args.check:
            ref = out["reference"]
            if ref["mode"] == "logits":
                how = "logits within atol={} rtol={}".format(ref["atol"], ref["rtol"])
            else:
                how = ("another precision than the reference: top-1 class kept on the samples "
                       "that are no near tie ({} per exit)".format(ref["decisive_samples"]))
            print("reference check ({} samples, {}): {}; max abs error per exit: {}; top-1 "
                  "agreement per exit: {}".format(
                      ref["samples"], how, "passed" if ref["passed"] else "FAILED",
                      ", ".join("{:.3g}".format(e) for e in ref["max_abs_error"]),
                      ", ".join("{:.0%}".format(a) for a in ref["top1_agreement"])))
            print_builds(ref["builds"])
    if args.check and not out["reference"]["passed"]:
        raise IntegrityError("reference outputs do not match: the bundle's graphs or this "
                             "machine's executor produce different results than at conversion")
    return 0


def add_profile_arguments(p):
    p.add_argument("bundle", nargs="?", help="path to NAME.edgebundle")
    p.add_argument("--list-sensors", action="store_true", help="list this machine's power sensors")
    p.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument("--warmup", type=int, default=10,
                   help="untimed runs of each kind before timing (default 10; and --warmup-seconds)")
    p.add_argument("--warmup-seconds", type=float, default=0.2,
                   help="warm up for at least this long per batch size (default 0.2)")
    p.add_argument("--repeats", type=int, default=200,
                   help="timed runs of each kind, per batch size (default 200; and --min-seconds)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="time for at least this long per batch size (default 1.0)")
    p.add_argument("--data", help=".npz with 'x' (and 'y') for an end-to-end early-exit run")
    p.add_argument("--no-sensor", action="store_true", help="measure latency only")
    p.add_argument("--db", help="profile database (SQLite) to record the rows in")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="profile on a free board reserved through this TVM RPC tracker "
                        "(boards run `edgesdk rpc-server`); rows merge into --db")
    p.add_argument("--key", help="with --rpc-tracker: the kind of board, e.g. jetson-tx2")
    p.add_argument("--session-timeout", type=float, default=0,
                   help="with --rpc-tracker: seconds before the board ends the session (0: none)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _list_sensors(args):
    from edgesdk.runtime.power import probe_sensors
    sensors = [s.describe() for s in probe_sensors()]
    if args.json:
        print(json.dumps({"sensors": sensors}))
    elif not sensors:
        print("no sensor: no Jetson INA3221, power_supply, readable RAPL or NVML energy counter "
              "found; profiles will have latency but no energy")
    else:
        print(format_table(["sensor", "rail", "kind", "total", "source"],
                           [[d["sensor"], d["rail"], d["kind"], "yes" if d["total"] else "",
                             d["source"]] for d in sensors]))
    return 0


def cmd_profile(args):
    """Profile every stage and head of a bundle (and optionally an end-to-end run)."""
    if args.list_sensors:
        return _list_sensors(args)
    if not args.bundle:
        raise InputError("give a bundle to profile (or --list-sensors)")
    batches = parse_batch_sizes(args.batch_sizes)
    if args.rpc_tracker or args.key:
        if not (args.rpc_tracker and args.key):
            raise InputError("remote profiling needs both --rpc-tracker HOST:PORT and --key BOARD")
        from edgesdk.runtime.rpc import profile_remote
        out = profile_remote(args.bundle, args.rpc_tracker, args.key, batches, args.warmup,
                             args.repeats, db=args.db, data=args.data, no_sensor=args.no_sensor,
                             threads=args.threads, session_timeout=args.session_timeout)
        if not args.json:
            sys.stderr.write("profiled on a '{}' board through {}; {} rows merged into {}\n".format(
                args.key, args.rpc_tracker, out["merged_rows"], args.db or "no database (no --db)"))
    else:
        from edgesdk.runtime.profiler import profile_bundle
        out = profile_bundle(args.bundle, batches, args.warmup, args.repeats, db=args.db,
                             data=args.data, no_sensor=args.no_sensor, threads=args.threads,
                             progress=not args.json, warmup_s=args.warmup_seconds,
                             min_seconds=args.min_seconds)
    print_profile(out, args.json)
    return 0


def parse_batch_sizes(text):
    """``"1,8,64"`` -> ``[1, 8, 64]``."""
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise InputError("--batch-sizes must be comma-separated integers, e.g. 1,8,64")


def print_profile(out, as_json):
    """Print :func:`~edgesdk.runtime.profiler.profile_bundle`'s result as JSON or tables."""
    if as_json:
        print(json.dumps(out))
        return
    sensor = out["sensor"]
    print("sensor: {}".format("{} {}".format(sensor["sensor"], sensor["rail"]) if sensor else
                              "no sensor (latency only, energy not measured)"))
    rows = out["graphs"]
    ms = lambda v: "-" if v is None else "{:.4f}".format(v)  # noqa: E731
    print(format_table(
        ["graph", "batch", "mean ms", "trimmed", "p10", "p50", "p90", "p99", "spread", "",
         "energy mJ", "peak RSS MiB"],
        [[r["graph"], r["batch"], ms(r["mean_ms"]), ms(r.get("trimmed_mean_ms")),
          ms(r.get("p10_ms")), ms(r["p50_ms"]), ms(r["p90_ms"]), ms(r["p99_ms"]),
          "-" if r.get("spread") is None else "{:.2f}".format(r["spread"]),
          "NOISY" if r.get("noisy") else "",
          "{:.3f}".format(r["energy_mj"]) if r["energy_mj"] is not None else r["energy_status"],
          "{:.0f}".format(r["peak_rss_mb"]) if r["peak_rss_mb"] else "?"] for r in rows]))
    from edgesdk.profiles import COST_STATISTIC, NOISY_SPREAD
    noisy = sorted({r["graph"] for r in rows if r.get("noisy")})
    print("runtime, runtime-head, runtime-final, runtime-call: the engine's own work per stage "
          "step, per early head, for the final head and per call. The cost model uses "
          "{}.".format(COST_STATISTIC))
    if noisy:
        print("NOISY (p90/p50 > {}): {}: the timings spread widely (a loaded machine or "
              "scheduler spikes); profile again when the machine is quiet, or with a longer "
              "--min-seconds".format(NOISY_SPREAD, ", ".join(noisy)))
    e2e = out.get("end_to_end")
    if e2e:
        print("\nend to end ({} samples, batch 1): {:.3f} ms/sample, exits {}{}".format(
            e2e["samples"], e2e["mean_ms_per_sample"], e2e["exit_counts"],
            ", accuracy {:.2%}".format(e2e["accuracy"]) if e2e["accuracy"] is not None else ""))


def add_engine_arguments(p):
    p.add_argument("--workspace-mb", type=int, default=1024,
                   help="TensorRT builder workspace per engine in MiB (default 1024; a TX2 "
                        "shares 8 GB between CPU and GPU)")
    p.add_argument("--json", action="store_true", help="print the build records as JSON")


def cmd_build_engines(args):
    """Build the bundle's TensorRT engines on this device and print what was built."""
    from edgesdk.runtime.tensorrt_build import build_engines
    if args.workspace_mb < 1:
        raise InputError("--workspace-mb must be >= 1")
    records = build_engines(args.bundle, args.workspace_mb, progress=not args.json)
    print_engine_records(records, args.json)
    return 0


def print_engine_records(records, as_json):
    """The engines just built, as a table or JSON."""
    if as_json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return
    rows = [(r["file"], r["precision"], r["built_with"]["tensorrt"], r["built_with"]["gpu"],
             r["built_with"]["compute_capability"], "{:.1f}".format(r["build_seconds"]))
            for r in records]
    print(format_table(["engine", "precision", "TensorRT", "GPU", "sm", "build s"], rows))


def run_command(func, args, prog):
    """Run a command function; map EdgeSDKError to its exit code with a message on stderr,
    and print the runtime's warnings (inputs far outside the conversion data) as one line."""
    from edgesdk.runtime.input_stats import InputRangeWarning

    def show(message, category, *rest, **kw):
        sys.stderr.write("{}: warning: {}\n".format(prog, message))
    with warnings.catch_warnings():
        warnings.simplefilter("default", InputRangeWarning)
        warnings.showwarning = show
        try:
            return func(args)
        except EdgeSDKError as exc:
            sys.stderr.write("{}: error: {}\n".format(prog, exc))
            return exc.exit_code
        except KeyboardInterrupt:
            sys.stderr.write("{}: interrupted\n".format(prog))
            return 130
        except Exception as exc:  # a defect in edgesdk: say so, traceback only on request
            return report_internal_error(prog, exc, getattr(args, "verbose", False))


def report_internal_error(prog, exc, verbose):
    """Print an unexpected exception as an internal error (one line, the traceback only when
    ``verbose``); returns :attr:`InternalError.exit_code`."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    sys.stderr.write("{}: internal error (a defect in edgesdk, not in your input; please report "
                     "it with the command line): {}: {}{}{}\n".format(
                         prog, type(exc).__name__, exc,
                         " at {}:{}".format(os.path.basename(where.filename), where.lineno)
                         if where else "",
                         "" if verbose else " (--verbose prints the traceback)"))
    return InternalError.exit_code


def main(argv=None):
    """Entry point of the standalone runtime (`python3 edgesdk-runtime.pyz run|validate|profile`)."""
    parser = argparse.ArgumentParser(prog="edgesdk-runtime",
                                     description="Run and validate edgesdk bundles on a device.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command")
    sub.required = True  # Python 3.6 has no add_subparsers(required=...)
    add_run_arguments(sub.add_parser("run", help="run a bundle over inputs"))
    add_validate_arguments(sub.add_parser("validate", help="check a bundle's integrity"))
    add_profile_arguments(sub.add_parser("profile", help="measure stages and heads on this device"))
    from edgesdk.runtime.rpc import add_server_arguments, cmd_rpc_server
    add_server_arguments(sub.add_parser("rpc-server", help="serve profiling to a TVM RPC tracker"))
    p = sub.add_parser("build-engines", help="build the bundle's TensorRT engines on this device")
    p.add_argument("bundle", help="path to NAME.edgebundle (prepared on the host with "
                                  "`edgesdk build --toolchain tensorrt`)")
    add_engine_arguments(p)
    args = parser.parse_args(argv)
    func = {"run": cmd_run, "validate": cmd_validate, "profile": cmd_profile,
            "rpc-server": cmd_rpc_server, "build-engines": cmd_build_engines}[args.command]
    return run_command(func, args, "edgesdk-runtime " + args.command)
