"""Tune a bundle's stages and heads for a board processor with TVM MetaSchedule, then build
them with the tuning database (kept in the bundle). Resumable: run the same command again to
continue after an interruption; finished workloads are skipped."""

from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("bundle", help="path to NAME.edgebundle (rewritten in place, atomically)")
    p.add_argument("--target", default="host",
                   help="board (see `edgesdk targets`) or a board file (.toml/.json); "
                        "default: host")
    p.add_argument("--processor", default="cpu", help="the board's processor (default: cpu)")
    p.add_argument("--trials", type=int, default=32,
                   help="measured candidates per distinct workload, over all runs (default 32)")
    p.add_argument("--batch", default="1", help="batch size compiled in (default 1)")
    p.add_argument("--tuning-db", metavar="DIR",
                   help="tuning database folder to create or extend, as `edgesdk build "
                        "--tuning-db` applies it (default: BUNDLE.tuning/TARGET-PROCESSOR); "
                        "share one between models with the same layers")
    p.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure on boards registered with this TVM tracker (default: here)")
    p.add_argument("--key", help="the boards' key at the tracker (with --rpc-tracker)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args):
    """Call :func:`edgesdk.converters.tvm.tune.tune_bundle` and print a summary."""
    import json
    from edgesdk.converters.toolchain import parse_batch
    from edgesdk.converters.tvm.tune import tune_bundle
    from edgesdk.errors import InputError
    rpc = None
    if args.rpc_tracker:
        host, _, port = args.rpc_tracker.rpartition(":")
        if not host or not port.isdigit() or not args.key:
            raise InputError("--rpc-tracker takes HOST:PORT and needs --key")
        rpc = (host, int(port), args.key)
    result = tune_bundle(args.bundle, args.target, args.processor, trials=args.trials,
                         batch=parse_batch(args.batch), database=args.tuning_db, rpc=rpc)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("tuned {} of {} workloads ({} already done) with {} trials in {:.1f} min ({} cost "
          "model)".format(result["tuned"], result["tasks"], result["skipped"], result["trials"],
                          result["seconds"] / 60.0, result["cost_model"]))
    print("database {} (sha256 {}), applied to {} graphs".format(
        result["database"], result["database_sha256"][:12], len(result["builds"])))
    return 0
