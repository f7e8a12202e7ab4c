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


def read_hls_config(path):
    """An hls4ml-style configuration file (YAML or JSON) as build options: ``Model`` may set
    ``Strategy`` and ``ReuseFactor``; ``LayerName`` maps ``GRAPH:LAYER`` to a ``Precision``
    (a type, or ``{"result": type}``), which is checked on the calibration data like
    ``--layer-precision``. Types for the whole model are not taken: edgesdk chooses them from
    data. Returns ``{"strategy", "reuse_factor", "precision"}`` (None where not given)."""
    from edgesdk.errors import InputError
    try:
        with open(path) as f:
            if path.lower().endswith(".json"):
                import json
                cfg = json.load(f)
            else:
                import yaml
                cfg = yaml.safe_load(f)
    except Exception as exc:   # OSError, JSON's ValueError, yaml.YAMLError
        raise InputError("cannot read the hls4ml config '{}': {}".format(path, exc))
    if not isinstance(cfg, dict) or set(cfg) - {"Model", "LayerName"}:
        raise InputError("{}: an hls4ml config holds Model and LayerName, got {}".format(
            path, sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__))
    model = cfg.get("Model") or {}
    unknown = set(model) - {"Strategy", "ReuseFactor"}
    if unknown:
        raise InputError("{}: Model {}: edgesdk takes Strategy and ReuseFactor there (types "
                         "come from data; set a layer's in LayerName)".format(
                             path, ", ".join(sorted(unknown))))
    precision = {}
    for key, layer in (cfg.get("LayerName") or {}).items():
        graph, _, name = str(key).partition(":")
        kind = layer.get("Precision") if isinstance(layer, dict) else None
        if isinstance(kind, dict):
            kind = kind.get("result")
        if not name or not isinstance(kind, str) or set(layer) - {"Precision"}:
            raise InputError("{}: LayerName {}: give GRAPH:LAYER with a Precision (a type, or "
                             "result: type); per-layer ReuseFactor and Strategy are not "
                             "taken".format(path, key))
        precision.setdefault(graph, {})[name] = kind
    return {"strategy": model.get("Strategy"), "reuse_factor": model.get("ReuseFactor"),
            "precision": precision}


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
        ("--strategy", {"choices": ["Latency", "Resource"],
                        "help": "hls4ml's strategy (default Latency; Resource reuses "
                                "multipliers and keeps weights in BRAM, which the estimate "
                                "does not count)"}),
        ("--io-type", {"choices": ["io_parallel", "io_stream"],
                       "help": "hls4ml's io_type for every graph (default: io_stream for "
                               "stages with convolutions, io_parallel for heads)"}),
        ("--hls-config", {"metavar": "FILE",
                          "help": "an hls4ml config (YAML or JSON): Model Strategy and "
                                  "ReuseFactor, LayerName GRAPH:LAYER Precision; flags win"}),
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
        given = read_hls_config(args.hls_config) if args.hls_config else {}
        precision = given.get("precision") or {}
        for graph, layers in parse_layer_precision(args.layer_precision).items():
            precision.setdefault(graph, {}).update(layers)
        records = build_fpga(draft, target, calibration_data=data, width=args.width or 16,
                             reuse_factor=args.reuse_factor or given.get("reuse_factor") or 1,
                             precision=precision, progress=not args.json,
                             strategy=args.strategy or given.get("strategy") or "Latency",
                             io_type=args.io_type)
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
