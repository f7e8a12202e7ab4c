"""Read Vitis HLS synthesis reports of a bundle's HLS projects into its FPGA build records,
beside edgesdk's estimates (after `tar -xzf BUNDLE/fpga/BOARD/GRAPH.hls.tar.gz -C DIR` and C
synthesis of each project with Vitis HLS)."""
import json

from edgesdk.runtime.cli.options import add_wait_argument
from edgesdk.table import format_table


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("bundle", help="NAME.edgebundle with hls4ml builds (rewritten, atomically)")
    p.add_argument("folder", help="the folder the HLS projects were extracted into, one "
                                  "NAME/ per graph with its Vitis solution")
    p.add_argument("--target", default="ultra96-v2", help="the FPGA board the builds are for")
    p.add_argument("--json", action="store_true", help="print the records as JSON")


def run(args):
    """Read every graph's report and print synthesis beside the estimate."""
    from edgesdk.converters.hls4ml.reports import read_synthesis_reports
    records = read_synthesis_reports(args.bundle, args.target, args.folder)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    rows = [[gid, r["dsp"], r["lut"], r["ff"], r["bram_18k"], r["latency_cycles_worst"],
             "{:.4f}".format(r["latency_ms_worst"]),
             " ".join("{} {:.2f}x".format(k, v) for k, v in sorted(r["vs_estimate"].items()))]
            for gid, r in records.items()]
    print(format_table(["graph", "DSP", "LUT", "FF", "BRAM18", "worst cycles", "worst ms",
                        "synthesis / estimate"], rows))
    return 0
