"""Write a Markdown and an HTML report with PNG plots from a profile database: per-stage costs,
accuracy vs latency/energy over thresholds with the Pareto front, the exit histogram, and
predicted vs measured cost of the measured runs; with --bundle, each bundle's compression
(builds, per-exit accuracy of the selected builds vs FP32, pruning)."""


def add_arguments(p):
    p.add_argument("db", help="profile database (from `edgesdk profile --db`; --data adds accuracy)")
    p.add_argument("-o", "--output", default="edgesdk-report", help="output folder")
    p.add_argument("--bundle", action="append", default=[],
                   help="add this bundle's compression: builds, per-exit table, pruning (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="print what was written and shown (files, costs, trade-offs) as JSON")


def run(args):
    """Call :func:`edgesdk.converters.report.write_report`."""
    import os
    from edgesdk.converters.report import write_report
    from edgesdk.profiles import NOISY_SPREAD
    from edgesdk.errors import InputError
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise InputError("'{}' exists and is not a folder".format(args.output))
    result = write_report(args.db, args.output, bundle_paths=args.bundle)
    if args.json:
        import json
        print(json.dumps(result))
        return 0
    print("wrote {} and report.html beside it ({} plots)".format(result["markdown"],
                                                                 len(result["plots"])))
    for section in result["sections"]:
        if section["noisy"]:
            print("noisy measurements (p90/p50 > {}) on {}: {}".format(
                NOISY_SPREAD, section["device_words"], ", ".join(section["noisy"])))
    return 0
