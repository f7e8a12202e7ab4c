"""`build-engines`: build a bundle's TensorRT engines on this device."""
import json

from edgesdk.errors import InputError
from edgesdk.table import format_table
from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("bundle", help="path to NAME.edgebundle (prepared on the host with "
                                  "`edgesdk build --toolchain tensorrt`)")
    p.add_argument("--workspace-mb", type=int,
                   help="TensorRT builder workspace per engine in MiB (default: the plan's, "
                        "as in its trtexec.sh; 1024 unless `edgesdk build` was given "
                        "another; a TX2 shares 8 GB between CPU and GPU)")
    p.add_argument("--json", action="store_true", help="print the build records as JSON")


def run(args):
    """Build the bundle's TensorRT engines on this device and print what was built."""
    from edgesdk.runtime.executors.tensorrt_build import build_engines
    if args.workspace_mb is not None and args.workspace_mb < 1:
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
