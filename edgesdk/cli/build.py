"""Build a bundle's stages and heads for a board with one of the toolchains (TVM, TensorRT,
hls4ml): each adds its builds to the bundle, rewritten in place atomically. Options that name
a toolchain in their help apply to that toolchain only."""

from edgesdk.runtime.cli.options import add_wait_argument


def _toolchains():
    from edgesdk.backends import BUILD_TOOLCHAINS, TOOLCHAIN_NAMES
    return [BUILD_TOOLCHAINS.get(name) for name in TOOLCHAIN_NAMES]


def _options():
    """``{flag: (argparse kwargs, [(toolchain, its help)])}``, every toolchain's options once."""
    merged = {}
    for tc in _toolchains():
        for flag, kwargs in tc.options:
            entry = merged.setdefault(flag, (dict(kwargs), []))
            entry[1].append((tc.name, kwargs.get("help", "")))
    return merged


def add_arguments(p):
    add_wait_argument(p)
    from edgesdk.backends import TOOLCHAIN_NAMES, toolchains_help
    p.add_argument("bundle", help="path to NAME.edgebundle (rewritten in place, atomically)")
    p.add_argument("--toolchain", default="tvm", choices=TOOLCHAIN_NAMES,
                   help="default: tvm. " + toolchains_help())
    p.add_argument("--target", help="board (see `edgesdk targets`) or a board file (.toml/"
                                    ".json); default: {}".format(
        ", ".join("{} for {}".format(tc.default_target, tc.name) for tc in _toolchains())))
    for flag, (kwargs, owners) in _options().items():
        kwargs["help"] = "; ".join("{}: {}".format(name, text) for name, text in owners)
        p.add_argument(flag, **kwargs)
    p.add_argument("--json", action="store_true", help="print the build records as JSON")


def run(args):
    """Build with the chosen toolchain and print what was built."""
    from edgesdk.backends import BUILD_TOOLCHAINS
    from edgesdk.converters.draft import edit_bundle
    from edgesdk.converters.toolchain import option_dest
    from edgesdk.errors import InputError
    toolchain = BUILD_TOOLCHAINS.get(args.toolchain)()
    own = {flag for flag, _ in toolchain.options}
    wrong = [flag for flag in _options() if flag not in own and getattr(args, option_dest(flag))]
    if wrong:
        raise InputError("{}: these options do not apply to --toolchain {}".format(
            ", ".join(wrong), args.toolchain))
    target = args.target or toolchain.default_target
    with edit_bundle(args.bundle) as draft:
        result = toolchain.build(draft, target, args)
    return toolchain.report(result, args.bundle, target, args)
