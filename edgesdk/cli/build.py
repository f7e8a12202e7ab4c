"""Build a bundle's stages and heads for a board.

``--toolchain tvm``: compile for a board processor with TVM and add the libraries to the
bundle (checked: ELF machine, needed libraries, glibc symbol versions); GPU processors also
get their kernel source and the step to finish on the board.

``--toolchain tensorrt``: check every graph against the board's TensorRT release and write
the TensorRT plan (profiles, calibration cache, trtexec commands); with ``--on-device``
(on the machine with the GPU and TensorRT) also build and register the engines."""


def add_arguments(p):
    from edgesdk.backends import TOOLCHAIN_NAMES, toolchains_help
    from edgesdk.runtime.cli.build_engines import add_options
    p.add_argument("bundle", help="path to NAME.edgebundle (rewritten in place, atomically)")
    p.add_argument("--toolchain", default="tvm", choices=TOOLCHAIN_NAMES,
                   help="default: tvm. " + toolchains_help())
    p.add_argument("--target", help="board (see `edgesdk targets`; default: host for tvm, "
                                    "jetson-tx2 for tensorrt, ultra96-v2 for hls4ml)")
    p.add_argument("--processor", default="cpu", help="tvm: the board's processor, cpu or gpu")
    p.add_argument("--batch",
                   help="tvm: batch size compiled in (default 1; the runtime runs bigger batches "
                        "in slices), 'any' for a symbolic batch, which cannot be tuned. "
                        "tensorrt: N or MIN:OPT:MAX of the optimization profile (default 1:1:32)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                   help="tensorrt: engine precision (default: the board's, fp16 on the TX2); "
                        "int8 parses the bundle's symmetric INT8 (Q/DQ) builds")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=MIN:OPT:MAX",
                   help="tensorrt: profile of an input with dynamic dimensions besides the "
                        "batch, shapes like 1x3x64x64 (repeatable)")
    p.add_argument("--decompose", action="store_true",
                   help="tensorrt: rewrite operators the TensorRT release lacks where a "
                        "decomposition exists (checked against ONNX Runtime)")
    p.add_argument("--on-device", action="store_true",
                   help="tensorrt: also build the engines here with TensorRT's Python API "
                        "(needs the GPU and TensorRT that will run them)")
    add_options(p)
    p.add_argument("--reuse-factor", type=int,
                   help="hls4ml: multiplications per multiplier (default 1: fully parallel); "
                        "raise it when a graph does not fit the board")
    p.add_argument("--width", type=int,
                   help="hls4ml: total bits of the fixed-point types chosen from data (default 16)")
    p.add_argument("--calibration-data",
                   help="hls4ml: .npz with 'x' (or an image folder) to choose types and check "
                        "overflow on (default: the bundle's reference inputs)")
    p.add_argument("--layer-precision", action="append", default=[],
                   metavar="GRAPH:LAYER=TYPE",
                   help="hls4ml: set one layer's result type by hand, e.g. "
                        "stage0:Conv_0=fixed<12,4> (checked against the data; repeatable)")
    p.add_argument("--tuning-db",
                   help="MetaSchedule database folder (from `edgesdk tune`) to apply")
    p.add_argument("--emulate", action="store_true",
                   help="aarch64 CPU builds: run them under qemu-user on the bundle's reference "
                        "inputs and compare every exit with ONNX Runtime (fails above 1e-4)")


def parse_batch(text):
    """``--batch``: a positive integer or ``any`` (None)."""
    from edgesdk.errors import InputError
    if text == "any":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError("--batch takes a positive integer or 'any', got '{}'".format(text))
    return value


# Options that only one toolchain takes: (attribute, flag, toolchain).
OWN_OPTIONS = (("tuning_db", "--tuning-db", "tvm"), ("emulate", "--emulate", "tvm"),
               ("precision", "--precision", "tensorrt"), ("shape", "--shape", "tensorrt"),
               ("decompose", "--decompose", "tensorrt"), ("on_device", "--on-device", "tensorrt"),
               ("reuse_factor", "--reuse-factor", "hls4ml"), ("width", "--width", "hls4ml"),
               ("calibration_data", "--calibration-data", "hls4ml"),
               ("layer_precision", "--layer-precision", "hls4ml"))


def run(args):
    """Build with the chosen toolchain and print what was built."""
    from edgesdk.errors import InputError
    wrong = [flag for attr, flag, tool in OWN_OPTIONS
             if tool != args.toolchain and getattr(args, attr)]
    if args.toolchain != "tvm" and args.processor != "cpu":
        wrong.append("--processor")
    if wrong:
        raise InputError("{}: these options do not apply to --toolchain {}".format(", ".join(wrong),
                                                                        args.toolchain))
    if args.toolchain == "tensorrt":
        return run_tensorrt(args)
    if args.toolchain == "hls4ml":
        return run_hls4ml(args)
    import json
    from edgesdk.converters.tvm.build import build_tvm
    from edgesdk.table import format_table
    records = build_tvm(args.bundle, args.target or "host", args.processor,
                        batch=parse_batch(args.batch or "1"), database=args.tuning_db)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = [(r["file"], r["artifact"], (r.get("elf") or {}).get("machine", "-"),
             (r.get("elf") or {}).get("glibc") or "-",
             ",".join((r.get("elf") or {}).get("needed") or []) or "-",
             "yes" if r["tvm"]["tuning_database_sha256"] else "no") for r in records]
    print(format_table(["file", "artifact", "machine", "newest glibc", "needs", "tuned"], rows))
    if records and records[0].get("kernels"):
        print("\nGPU kernels: {}; on the board: {}".format(records[0]["kernels"]["file"],
                                                        records[0]["kernels"]["device_build"]))
    if args.emulate:
        from edgesdk.converters.tvm.build import build_name
        from edgesdk.converters.tvm.emulation import check_emulated
        check = check_emulated(args.bundle, build_name(args.target or "host", args.processor))
        print("\nunder qemu-aarch64 vs ONNX Runtime on {} reference samples: max abs error per "
              "exit {} -> {}".format(check["samples"],
                                     ", ".join("{:.2e}".format(e) for e in check["max_abs_error"]),
                                     "ok" if check["passed"] else
                                     "FAILED (> {})".format(check["atol"])))
        return 0 if check["passed"] else 1
    return 0


def run_tensorrt(args):
    """``--toolchain tensorrt``: prepare the plan, then (``--on-device``) build the engines."""
    import json
    from edgesdk.converters.tensorrt.prepare import (
        DEFAULT_BATCH, parse_batch_profile, parse_shape_profile, prepare_tensorrt)
    from edgesdk.runtime.cli.build_engines import print_engine_records
    from edgesdk.table import format_table
    shapes = dict(parse_shape_profile(s) for s in args.shape)
    plan = prepare_tensorrt(args.bundle, args.target or "jetson-tx2", args.precision,
                            parse_batch_profile(args.batch) if args.batch else DEFAULT_BATCH,
                            shapes, args.decompose)
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
        print_engine_records(build_engines(args.bundle, args.workspace_mb,
                                           progress=not args.json), args.json)
    elif args.json:
        print(json.dumps(plan, indent=2, sort_keys=True))
    return 0


def parse_layer_precision(items):
    """``--layer-precision GRAPH:LAYER=TYPE`` -> ``{graph: {layer: type}}``."""
    from edgesdk.errors import InputError
    out = {}
    for item in items:
        head, _, kind = item.partition("=")
        graph, _, layer = head.partition(":")
        if not graph or not layer or not kind:
            raise InputError("--layer-precision takes GRAPH:LAYER=TYPE, got '{}'".format(item))
        out.setdefault(graph, {})[layer] = kind
    return out


def run_hls4ml(args):
    """``--toolchain hls4ml``: HLS projects and C simulations for an FPGA board."""
    import json
    from edgesdk.bundle import read_bundle
    from edgesdk.converters.hls4ml.build import build_fpga
    from edgesdk.table import format_table
    data = None
    if args.calibration_data:
        from edgesdk.runtime.datafiles import load_inputs
        spec = read_bundle(args.bundle).manifest["inputs"][0]
        data = load_inputs(args.calibration_data, spec)[0]
    records = build_fpga(args.bundle, args.target or "ultra96-v2", calibration_data=data,
                         width=args.width or 16, reuse_factor=args.reuse_factor or 1,
                         precision=parse_layer_precision(args.layer_precision),
                         progress=not args.json)
    if args.json:
        print(json.dumps(records, indent=2, sort_keys=True))
        return 0
    rows = [(r["file"], r["hls"]["io_type"], "{:.2e}".format(r["hls"]["max_abs_error_vs_onnxruntime"]),
             r["estimate"]["dsp"], r["estimate"]["lut"], r["estimate"]["bram_18k"],
             "{:.4f}".format(r["estimate"]["latency_ms"])) for r in records]
    print(format_table(["C simulation", "io", "max err vs ORT", "DSP*", "LUT*", "BRAM18*",
                        "latency ms*"], rows))
    fpga = read_bundle(args.bundle).manifest["fpga"][args.target or "ultra96-v2"]
    print("\n* {}. All graphs: {} DSP, {} LUT, {} BRAM18 of {}: {}".format(
        records[0]["estimate"]["label"], fpga["estimate"]["dsp"], fpga["estimate"]["lut"],
        fpga["estimate"]["bram_18k"], fpga["budget"], "fits" if fpga["fits"] else
        "does NOT fit: " + "; ".join(fpga["over"])))
    print("HLS projects (build_prj.tcl for Vitis HLS): {}".format(
        ", ".join(r["hls"]["project"] for r in records)))
    return 0
