"""List the boards edgesdk builds for: toolchains, precisions, processors with their TVM
targets or FPGA fabric, where builds happen, the C library floor and the power sensor."""
import json

from edgesdk.table import format_table
from edgesdk.targets import TARGETS, get_target


def add_arguments(p):
    p.add_argument("name", nargs="?", help="show one target in full (a name, or a board file "
                                           "to check: .toml or .json)")
    p.add_argument("--json", action="store_true", help="print the descriptors as JSON")


def run(args):
    """Print every target as a table (or one, or JSON)."""
    names = [args.name] if args.name else TARGETS.names()
    described = [get_target(n).describe() for n in names]
    if args.json or args.name:
        print(json.dumps(described if not args.name else described[0], indent=2))
        return 0
    rows = [(d["name"], d["arch"], d["os"] + (" glibc " + d["glibc"] if d["glibc"] else ""),
             ",".join(d["toolchains"]), ",".join(d["precisions"]), d["default_precision"],
             ",".join(p["name"] + ("(" + p["kernels"] + ")" if p["kernels"] else "")
                      for p in d["processors"]) or
             ("{part} @ {clock_mhz:g} MHz".format(**d["fabric"]) if d["fabric"] else ""),
             d["power_sensor"]) for d in described]
    print(format_table(["target", "arch", "system", "toolchains", "precisions", "default",
                        "tvm processors / fpga", "power sensor"], rows))
    return 0
