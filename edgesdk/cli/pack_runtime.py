"""Write the standalone device runtime: one .pyz that runs and validates bundles with only
Python 3.6+, numpy and onnxruntime on the board."""


def add_arguments(p):
    p.add_argument("output", help="where to write the .pyz, e.g. dist/edgesdk-runtime.pyz")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args):
    """Call :func:`edgesdk.runtime_pack.pack_runtime` and report."""
    from edgesdk.runtime_pack import pack_runtime
    modules = pack_runtime(args.output)
    if args.json:
        import json
        print(json.dumps({"output": args.output, "modules": modules}))
        return 0
    print("wrote {} ({} modules); on the device: python3 {} run BUNDLE INPUT.npz".format(
        args.output, len(modules), args.output))
    return 0
