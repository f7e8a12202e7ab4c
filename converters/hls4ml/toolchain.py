"""``edgesdk build --toolchain hls4ml``: HLS projects and bit-accurate C simulations of a
bundle's graphs for a Zynq board, with resource and latency estimates."""
from edgesdk.converters.toolchain import Toolchain


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


class Hls4mlToolchain(Toolchain):
    """hls4ml builds (see the module docstring)."""

    name = "hls4ml"
    default_target = "ultra96-v2"
    options = (
        ("--reuse-factor", {"type": int,
                            "help": "multiplications per multiplier (default 1: fully "
                                    "parallel); raise it when a graph does not fit the board"}),
        ("--width", {"type": int,
                     "help": "total bits of the fixed-point types chosen from data (default 16)"}),
        ("--calibration-data", {"help": ".npz with 'x' (or an image folder) to choose types "
                                        "and check overflow on (default: the bundle's "
                                        "reference inputs)"}),
        ("--layer-precision", {"action": "append", "default": [], "metavar": "GRAPH:LAYER=TYPE",
                               "help": "set one layer's result type by hand, e.g. "
                                       "stage0:Conv_0=fixed<12,4> (checked against the data; "
                                       "repeatable)"}),
    )

    def build(self, draft, target, args):
        from edgesdk.converters.hls4ml.build import build_fpga
        data = None
        if args.calibration_data:
            from edgesdk.runtime.datafiles import load_inputs
            data = load_inputs(args.calibration_data, draft.manifest["inputs"][0])[0]
        records = build_fpga(draft, target, calibration_data=data, width=args.width or 16,
                             reuse_factor=args.reuse_factor or 1,
                             precision=parse_layer_precision(args.layer_precision),
                             progress=not args.json)
        return records, draft.manifest["fpga"][target]

    def report(self, result, bundle, target, args):
        import json
        from edgesdk.table import format_table
        records, fpga = result
        if args.json:
            print(json.dumps(records, indent=2, sort_keys=True))
            return 0
        rows = [(r["file"], r["hls"]["io_type"],
                 "{:.2e}".format(r["hls"]["max_abs_error_vs_onnxruntime"]),
                 r["estimate"]["dsp"], r["estimate"]["lut"], r["estimate"]["bram_18k"],
                 "{:.4f}".format(r["estimate"]["latency_ms"])) for r in records]
        print(format_table(["C simulation", "io", "max err vs ORT", "DSP*", "LUT*", "BRAM18*",
                            "latency ms*"], rows))
        print("\n* {}. All graphs: {} DSP, {} LUT, {} BRAM18 of {}: {}".format(
            records[0]["estimate"]["label"], fpga["estimate"]["dsp"], fpga["estimate"]["lut"],
            fpga["estimate"]["bram_18k"], fpga["budget"], "fits" if fpga["fits"] else
            "does NOT fit: " + "; ".join(fpga["over"])))
        print("HLS projects (build_prj.tcl for Vitis HLS): {}".format(
            ", ".join(r["hls"]["project"] for r in records)))
        return 0
