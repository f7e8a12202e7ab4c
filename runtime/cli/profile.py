"""Measure every stage and exit head of a bundle on this machine inside real runs: latency
(mean, 10% trimmed mean, p10/p50/p90/p99, spread p90/p50 with a noisy flag), the engine's own
work per call, stage step and head, peak memory and, where a power sensor exists, energy with
the idle baseline; --list-sensors shows the sensors found."""
import json
import sys

from edgesdk.errors import InputError
from edgesdk.runtime.cli.options import add_providers_argument, parse_batch_sizes
from edgesdk.table import format_table


def add_arguments(p):
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
    add_providers_argument(p)
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="profile on a free board reserved through this TVM RPC tracker "
                        "(boards run `edgesdk rpc-server`); rows merge into --db")
    p.add_argument("--key", help="with --rpc-tracker: the kind of board, e.g. jetson-tx2")
    p.add_argument("--session-timeout", type=float, default=0,
                   help="with --rpc-tracker: seconds before the board ends the session (0: none)")
    p.add_argument("--per-layer", action="store_true",
                   help="also time every node of every graph with its format's own profiler "
                        "(ONNX Runtime's, the TVM VM's instrumentation, TensorRT's IProfiler), "
                        "stored in --db, and print the slowest (as trtexec --dumpProfile)")
    p.add_argument("--top", type=int, default=5, help="with --per-layer: nodes shown per graph")
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


def run(args):
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
        from edgesdk.runtime.cascade import cascade_levels
        from edgesdk.runtime.profiler import profile_bundle
        levels = cascade_levels(args.bundle)
        if levels and args.data:
            raise InputError("--data runs one bundle end to end: a cascade's levels take "
                             "other resolutions; profile without --data (or each level)")
        results = []
        for lid, path in levels or [(None, args.bundle)]:
            out = profile_bundle(path, batches, args.warmup, args.repeats, db=args.db,
                                 data=args.data, no_sensor=args.no_sensor, threads=args.threads,
                                 progress=not args.json, warmup_s=args.warmup_seconds,
                                 min_seconds=args.min_seconds, providers=args.providers,
                                 per_layer=args.per_layer)
            results.append((lid, out))
        if levels:   # each level of a resolution cascade is a bundle of its own
            if args.json:
                print(json.dumps({"levels": [dict(o, level=lid) for lid, o in results]}))
            else:
                for lid, o in results:
                    print("\ncascade level {}:".format(lid))
                    print_profile(o, False, args.top)
            return 0
    if args.per_layer and (args.rpc_tracker or args.key):
        raise InputError("--per-layer runs on this machine: profile on the board itself")
    print_profile(out, args.json, args.top)
    return 0


def print_profile(out, as_json, top=5):
    """Print :func:`~edgesdk.runtime.profiler.profile_bundle`'s result as JSON or tables (with
    the ``top`` slowest nodes of each graph, where layers were timed)."""
    if as_json:
        print(json.dumps(out))
        return
    sensor = out["sensor"]
    print("sensor: {}".format("{} {}".format(sensor["sensor"], sensor["rail"]) if sensor else
                              "no sensor (latency only, energy not measured)"))
    rows = out["graphs"]
    ms = lambda v: "-" if v is None else "{:.4f}".format(v)  # noqa: E731
    per_s = lambda r: "-" if not r.get("mean_ms") or r["mean_ms"] <= 0 or r.get(  # noqa: E731
        "kind") == "runtime" else "{:.0f}".format(r["batch"] * 1000.0 / r["mean_ms"])
    print(format_table(
        ["graph", "batch", "mean ms", "trimmed", "min", "p10", "p50", "p90", "p99", "max",
         "samples/s", "spread", "", "energy mJ", "peak RSS MiB"],
        [[r["graph"], r["batch"], ms(r["mean_ms"]), ms(r.get("trimmed_mean_ms")),
          ms(r.get("min_ms")), ms(r.get("p10_ms")), ms(r["p50_ms"]), ms(r["p90_ms"]),
          ms(r["p99_ms"]), ms(r.get("max_ms")), per_s(r),
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
    _print_layers(out.get("layers"), top, ms)
    e2e = out.get("end_to_end")
    if e2e:
        print("\nend to end ({} samples, batch 1): {:.3f} ms/sample, exits {}{}".format(
            e2e["samples"], e2e["mean_ms_per_sample"], e2e["exit_counts"],
            ", accuracy {:.2%}".format(e2e["accuracy"]) if e2e["accuracy"] is not None else ""))


def _print_layers(layers, top, ms):
    """The ``top`` slowest nodes of each graph, per build and batch."""
    if layers is None:
        return
    if not layers:
        print("\nper-layer: none of these builds' formats can time their nodes")
        return
    groups = {}
    for r in layers:
        groups.setdefault((r["graph"], r["build"], r["precision"], r["batch"]), []).append(r)
    for (graph, build, precision, batch), rows in groups.items():
        rows = sorted(rows, key=lambda r: -r["mean_ms"])
        print("\n{} ({} {}, batch {}): {} nodes, {} ms per call in all; slowest {}:".format(
            graph, build, precision, batch, len(rows), ms(sum(r["mean_ms"] for r in rows)),
            min(top, len(rows))))
        print(format_table(["node", "op", "ms per call", "share"],
                           [[r["node"], r["op"], ms(r["mean_ms"]),
                             "-" if r["share"] is None else "{:.1%}".format(r["share"])]
                            for r in rows[:top]]))
