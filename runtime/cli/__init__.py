"""The device runtime's command line (`python3 edgesdk-runtime.pyz VERB`): one module per verb,
each with ``add_arguments(parser)`` and ``run(args)``; the host CLI (`edgesdk`) takes the same
modules for the verbs it shares. Python 3.6 compatible.
"""
import argparse
import importlib

from edgesdk.runtime.cli.command import run_command

# verb -> (module in edgesdk.runtime.cli, help)
VERBS = {
    "run": ("run", "run a bundle over inputs"),
    "validate": ("validate", "check a bundle's integrity (and reference outputs with --check)"),
    "profile": ("profile", "measure stages, heads and the engine's own work on this device"),
    "compare": ("compare", "compare builds (or bundles) tensor by tensor on the same inputs"),
    "rpc-server": ("rpc_server", "serve profiling to a TVM RPC tracker"),
    "build-engines": ("build_engines", "build the bundle's TensorRT engines on this device"),
    "register-engines": ("register_engines",
                         "register TensorRT engines built by hand with trtexec on this device"),
}


def verb_module(verb):
    """The module of one of :data:`VERBS`."""
    return importlib.import_module("edgesdk.runtime.cli." + VERBS[verb][0])


def main(argv=None):
    """Entry point of the standalone runtime (`python3 edgesdk-runtime.pyz run|validate|profile`)."""
    parser = argparse.ArgumentParser(prog="edgesdk-runtime",
                                     description="Run and validate edgesdk bundles on a device.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command")
    sub.required = True  # Python 3.6 has no add_subparsers(required=...)
    for verb, (_, help_text) in VERBS.items():
        verb_module(verb).add_arguments(sub.add_parser(verb, help=help_text))
    args = parser.parse_args(argv)
    return run_command(verb_module(args.command).run, args, "edgesdk-runtime " + args.command)
