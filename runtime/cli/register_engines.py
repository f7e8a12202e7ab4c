"""Register TensorRT engines built by hand on this device (`sh BUNDLE/tensorrt/trtexec.sh`, or
trtexec with the plan's lines) as the bundle's TensorRT builds, so `--builds tensorrt` runs
them: each must deserialize with this device's TensorRT."""
from edgesdk.runtime.cli.build_engines import print_engine_records
from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("bundle", help="path to NAME.edgebundle (prepared on the host with "
                                  "`edgesdk build --toolchain tensorrt`)")
    p.add_argument("folder", help="the folder holding the engines, named as the plan names "
                                  "them (stage0.fp16.engine, ...; trtexec.sh writes them to "
                                  "BUNDLE/tensorrt/DEVICE/)")
    p.add_argument("--json", action="store_true", help="print the build records as JSON")


def run(args):
    """Check and register the engines, then print what was registered."""
    from edgesdk.runtime.executors.tensorrt_build import register_engines
    print_engine_records(register_engines(args.bundle, args.folder, progress=not args.json),
                         args.json)
    return 0
