"""``edgesdk build --toolchain tensorrt``: check every graph against the board's TensorRT
release and write the TensorRT plan (profiles, calibration cache, trtexec commands); with
``--on-device`` (on the machine with the GPU and TensorRT) also build and register the
engines."""
from edgesdk.converters.toolchain import Toolchain


class TensorRTToolchain(Toolchain):
    """TensorRT plans and engines (see the module docstring)."""

    name = "tensorrt"
    default_target = "jetson-tx2"
    options = (
        ("--batch", {"help": "N or MIN:OPT:MAX of the optimization profile (default 1:1:32)"}),
        ("--precision", {"choices": ["fp32", "fp16", "int8"],
                         "help": "engine precision (default: the board's, fp16 on the TX2); "
                                 "int8 parses the bundle's symmetric INT8 (Q/DQ) builds"}),
        ("--shape", {"action": "append", "default": [], "metavar": "NAME=MIN:OPT:MAX",
                     "help": "profile of an input with dynamic dimensions besides the batch, "
                             "shapes like 1x3x64x64 (repeatable); trtexec's NAME:1x3x64x64 "
                             "for one fixed shape"}),
        ("--decompose", {"action": "store_true",
                         "help": "rewrite operators the TensorRT release lacks where a "
                                 "decomposition exists (checked against ONNX Runtime)"}),
        ("--on-device", {"action": "store_true",
                         "help": "also build the engines here with TensorRT's Python API "
                                 "(needs the GPU and TensorRT that will run them)"}),
        ("--workspace-mb", {"type": int,
                            "help": "builder workspace per engine in MiB, in trtexec.sh, for "
                                    "build-engines on the board and with --on-device (default "
                                    "1024; a TX2 shares 8 GB between CPU and GPU)"}),
    )

    def build(self, draft, target, args):
        from edgesdk.converters.tensorrt.prepare import (
            DEFAULT_BATCH, DEFAULT_WORKSPACE_MB, parse_batch_profile, parse_shape_profile,
            prepare_tensorrt)
        from edgesdk.errors import InputError
        if args.workspace_mb is not None and args.workspace_mb < 1:
            raise InputError("--workspace-mb takes a number of MiB >= 1")
        shapes = dict(parse_shape_profile(s) for s in args.shape)
        return prepare_tensorrt(draft, target, args.precision,
                                parse_batch_profile(args.batch) if args.batch else DEFAULT_BATCH,
                                shapes, args.decompose, args.workspace_mb or DEFAULT_WORKSPACE_MB)

    def report(self, plan, bundle, target, args):
        import json
        from edgesdk.runtime.cli.build_engines import print_engine_records
        from edgesdk.table import format_table
        if not args.json:
            rows = [(gid, g["onnx"], g["precision"], g["calibration_cache"] or "-",
                     "; ".join(g["decomposed"]) or "-") for gid, g in plan["graphs"].items()]
            print(format_table(["graph", "parsed by TensorRT " + plan["release"], "precision",
                                "calibration cache", "decomposed"], rows))
            print("\ntrtexec commands: {}".format(plan["script"]))
            for w in plan["warnings"]:
                print("warning: " + w)
        if args.on_device:
            from edgesdk.runtime.executors.tensorrt_build import build_engines
            print_engine_records(build_engines(bundle, args.workspace_mb,
                                               progress=not args.json), args.json)
        elif args.json:
            print(json.dumps(plan, indent=2, sort_keys=True))
        return 0
