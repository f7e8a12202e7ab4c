"""`edgesdk <verb>`: one module per verb, each a thin wrapper over a public function.

Results go to stdout (``--json`` for machines), logs and progress to stderr. Exit codes:
0 ok, 2 usage, 4 user error, 5 missing dependency, 70 internal error (a defect in edgesdk;
``--verbose`` prints its traceback), 130 interrupted.
"""
import argparse
import importlib
import logging
import sys

import edgesdk
from edgesdk.runtime.cli.command import run_command

# verb -> module (in edgesdk.cli unless a full name: the verbs the device runtime has too
# are its modules); each module has add_arguments(parser) and run(args).
VERBS = {
    "convert": ("convert", "convert a PyTorch multi-exit model into a bundle"),
    "cascade": ("cascade", "build a resolution cascade: one model at several input sizes"),
    "build": ("build", "build a bundle's graphs for a board: TVM, TensorRT or hls4ml"),
    "calibrate": ("calibrate", "choose per-exit thresholds on labelled data"),
    "run": ("edgesdk.runtime.cli.run", "run a bundle over an .npz file or a folder of images"),
    "inspect": ("inspect", "summarise a bundle: stages, exits, thresholds, sizes, hashes"),
    "validate": ("edgesdk.runtime.cli.validate",
                 "check a bundle's hashes (and reference outputs with --check)"),
    "compare": ("edgesdk.runtime.cli.compare",
                "compare builds (or bundles) tensor by tensor on the same inputs"),
    "profile": ("edgesdk.runtime.cli.profile",
                "measure latency (and energy) of every stage and head on this machine"),
    "register-engines": ("edgesdk.runtime.cli.register_engines",
                         "register TensorRT engines built by hand with trtexec on this machine"),
    "rpc-server": ("edgesdk.runtime.cli.rpc_server",
                   "serve profiling to a TVM RPC tracker (run on each board)"),
    "profiles": ("profiles", "import, export or show a profile database"),
    "report": ("report", "write a Markdown/HTML report with plots from a profile database"),
    "sign": ("sign", "sign a bundle (Ed25519) so boards can require your signature"),
    "pack-runtime": ("pack_runtime", "write the standalone device runtime (.pyz)"),
    "hls-reports": ("hls_reports", "read Vitis HLS synthesis reports into a bundle's FPGA builds"),
    "tune": ("tune", "tune a bundle's graphs for a board with TVM MetaSchedule, then build"),
    "targets": ("targets", "list the target boards: toolchains, processors, precisions"),
}


def build_parser():
    """The argparse parser for every verb."""
    parser = argparse.ArgumentParser(prog="edgesdk", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="edgesdk " + edgesdk.__version__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    sub.required = True
    for verb, (module, help_text) in VERBS.items():
        mod = importlib.import_module(module if "." in module else "edgesdk.cli." + module)
        p = sub.add_parser(verb, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv=None):
    """Parse arguments and run one verb; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run_command(args.func, args, "edgesdk " + args.command)
