"""HLS builds of a bundle's stages and heads for a Zynq board with hls4ml, run bit-accurately
on the host through hls4ml's C simulation.

Per graph: the Brevitas QONNX graph (QAT models) or the FP32 ONNX graph is cleaned with qonnx
(channels-last, Gemm as MatMul; a trailing Transpose back to NCHW is dropped, the executor
transposes on the CPU instead), converted with hls4ml for the board's part and clock
(``io_stream`` for stages with convolutions, ``io_parallel`` for heads and dense graphs), and compiled with
g++ into a C-simulation library. The fixed-point types come from data, never from hls4ml's
``fixed<16,6>`` default: a QONNX graph keeps its quantizers' widths and gets its input type
from the calibration data; a float graph gets every layer's integer bits from the values the
layer produces on calibration data (traced at ``fixed<32,16>``), ``width`` bits in all. A
type given by hand that the calibration data overflows is refused with the layer named.

What the bundle gets, per board: ``fpga/BOARD/GRAPH.csim.so`` (the C simulation, this
machine's architecture, run by the ``fpga-csim`` executor), ``fpga/BOARD/GRAPH.hls.tar.gz``
(the HLS project with ``build_prj.tcl`` for Vitis HLS), and a build record with the types
chosen per layer, the I/O layouts, the agreement with ONNX Runtime on the calibration data
and the resource and latency estimate (:mod:`.estimate`).
"""
import os
import platform
import shutil
import tarfile
import tempfile

import numpy as np

from edgesdk.converters.builds import fp32_file
from edgesdk.converters.draft import edit_bundle
from edgesdk.converters.hls4ml.driver import (
    choose_io_type, convert_graph, hls4ml_module, predict, silently, unsupported_layers)
from edgesdk.converters.hls4ml.estimate import estimate, over_budget
from edgesdk.converters.hls4ml.graph import channels_last, project_name
from edgesdk.converters.hls4ml.precision import choose_precision
from edgesdk.errors import BuildError, InputError, UnsupportedOpError
from edgesdk.manifest import graph_entries, put_build
from edgesdk.runtime.executors.fpga_csim import hls_layout
from edgesdk.runtime.reference import read_reference
from edgesdk.targets import get_target


HLS_DIR = "fpga"


MAX_SAMPLES = 256


STRATEGIES = ("Latency", "Resource")
IO_TYPES = ("io_parallel", "io_stream")


def build_fpga(bundle, target="ultra96-v2", calibration_data=None, width=16,
               reuse_factor=1, precision=None, progress=True, strategy="Latency", io_type=None):
    """Build every stage and head of ``bundle`` (a bundle path, or a draft of one) with
    hls4ml for an FPGA ``target`` and record the builds (format ``fpga-csim``; see the
    module doc). ``calibration_data``: model inputs
    (default: the bundle's reference inputs), run through the bundle to get every graph's
    inputs. ``width``: total bits of the types chosen from data. ``reuse_factor``: hls4ml's
    (1: fully parallel). ``precision``: ``{graph id: {layer: type}}`` set by hand.
    ``strategy``: hls4ml's ``Latency`` (default) or ``Resource`` (multipliers reused over
    ``reuse_factor`` cycles, weights in BRAM; edgesdk's estimate does not model the BRAM of
    the weights). ``io_type``: ``io_parallel`` or ``io_stream`` for every graph (default:
    streams for stages with convolutions, parallel for heads). The bundle is rewritten in a
    staging copy. Returns the build records."""
    from edgesdk.converters.builds import graph_inputs
    from edgesdk.progress import Progress
    import onnx
    hls4ml = hls4ml_module()
    board = get_target(target)
    if board.fabric is None:
        raise InputError("target '{}' has no FPGA fabric; FPGA targets: ultra96-v2, zcu104, "
                         "pynq-z2".format(target))
    if not isinstance(width, int) or not 4 <= width <= 32:
        raise InputError("width must be an integer in 4..32, got {!r}".format(width))
    if not isinstance(reuse_factor, int) or reuse_factor < 1:
        raise InputError("reuse_factor must be a positive integer, got {!r}".format(reuse_factor))
    if strategy not in STRATEGIES:
        raise InputError("strategy is one of {}, got {!r}".format(", ".join(STRATEGIES), strategy))
    if io_type not in (None,) + IO_TYPES:
        raise InputError("io_type is one of {}, got {!r}".format(", ".join(IO_TYPES), io_type))
    with edit_bundle(bundle) as draft:
        entries = graph_entries(draft.manifest)
        precision = precision or {}
        x = _calibration_inputs(draft, calibration_data)
        sources, graphs = {}, {}
        for e in entries:
            quantized = bool(e.get("qonnx"))
            sources[e["id"]] = e["qonnx"]["file"] if quantized else fp32_file(e)
            graphs[e["id"]] = channels_last(onnx.load(draft.path(sources[e["id"]])))
        model = draft.model(builds=None if any(e.get("qonnx") for e in entries)
                            else ("onnx", "fp32"))
        feeds = graph_inputs(model, x)
        m = draft.manifest
        onnxruntime = dict(zip([e["id"] for e in m["stages"] + m["exits"]], model.stages + model.heads))
        bad = unsupported_layers(graphs)
        if bad:
            raise UnsupportedOpError("hls4ml {} cannot map {} graph(s):\n{}\nRewrite these layers "
                                     "(e.g. adaptive pooling as a fixed AvgPool2d for the static "
                                     "input size) or keep the model on another target.".format(
                                         hls4ml.__version__, len(bad),
                                         "\n".join("  {}: {}".format(g, m) for g, m in bad)))
        records = {}
        work = tempfile.mkdtemp(prefix="edgesdk-hls-")
        try:
            with Progress(len(entries), "hls4ml " + target, enabled=progress) as bar:
                out_dir = draft.path(HLS_DIR + "/" + target)
                shutil.rmtree(out_dir, ignore_errors=True)
                os.makedirs(out_dir)
                for e in entries:
                    records[e["id"]] = _build_graph(
                        hls4ml, e, graphs[e["id"]], board, feeds[e["id"]], width, reuse_factor,
                        precision.get(e["id"], {}), work, draft.root, sources[e["id"]],
                        onnxruntime[e["id"]], strategy, io_type)
                    bar.update(note=e["id"])
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for entry in entries:
            put_build(entry, records[entry["id"]], lambda b: b.get("device") == target)
        draft.remove_files("{}/{}/".format(HLS_DIR, target))
        draft.add_files(f for r in records.values() for f in (r["file"], r["hls"]["project"]))
        m["provenance"]["passes"].append(
            {"name": "hls4ml-build", "device": target, "hls4ml": hls4ml.__version__,
             "width": width, "reuse_factor": reuse_factor, "strategy": strategy,
             "io_type": io_type or "per graph"})
        total = {k: sum(r["estimate"][k] for r in records.values())
                 for k in ("dsp", "lut", "ff", "bram_18k")}
        m.setdefault("fpga", {})[target] = {
            "estimate": dict(total, label=records[entries[0]["id"]]["estimate"]["label"]),
            "budget": board.fabric.budget(), "part": board.fabric.part,
            "fits": not over_budget(total, board.fabric, reuse_factor, "all graphs"),
            "over": over_budget(total, board.fabric, reuse_factor, "all graphs together")}
    return [records[e["id"]] for e in entries]


def _calibration_inputs(bundle, data):
    if data is None:
        if not bundle.manifest.get("reference"):
            raise InputError("FPGA builds need calibration inputs (calibration_data / "
                             "--calibration-data): the bundle has no reference inputs")
        data = read_reference(bundle)[0]
    x = np.asarray(data[0] if isinstance(data, tuple) else data)
    if x.dtype.kind != "f" or len(x) == 0 or not np.isfinite(x).all():
        raise InputError("calibration data must be finite float model inputs with a batch "
                         "dimension, got {} {}".format(x.dtype, list(x.shape)))
    return np.ascontiguousarray(x[:MAX_SAMPLES], dtype=np.float32)


def _build_graph(hls4ml, entry, mw, board, feed, width, reuse, overrides, work, root, source,
                 reference, strategy="Latency", io_type=None):
    """Convert, compile, package and check one graph; returns its build record."""
    gid = entry["id"]
    name = project_name(gid)
    io_type = io_type or choose_io_type(mw, head=entry.get("after_stage") is not None)
    x = [hls_layout(feed[n], "NHWC") for n in entry["inputs"]]
    quantized = bool(entry.get("qonnx"))
    cfg, plan, ranges = choose_precision(hls4ml, mw, gid, name, board, io_type, x, width,
                                         quantized, overrides, os.path.join(work, gid))
    cfg["Model"]["ReuseFactor"] = reuse
    cfg["Model"]["Strategy"] = strategy
    for layer in cfg["LayerName"].values():
        if "ReuseFactor" in layer:
            layer["ReuseFactor"] = reuse
        if "Strategy" in layer:
            layer["Strategy"] = strategy
    project = os.path.join(work, gid, "project")
    hm = convert_graph(hls4ml, mw, cfg, project, board, io_type, name)
    layers = list(hm.get_layers())
    cost = estimate(layers, board.fabric, io_type)
    over = over_budget(cost, board.fabric, reuse, gid)
    if over:
        raise BuildError("{} does not fit {} (estimate):\n  {}".format(
            gid, board.name, "\n  ".join(over)))
    try:
        silently(hm.compile)
    except Exception as exc:
        raise BuildError("g++ could not build the C simulation of {}: {}".format(gid, exc))
    libs = [f for f in os.listdir(os.path.join(project, "firmware")) if f.endswith(".so")]
    rel_dir = "{}/{}".format(HLS_DIR, board.name)
    lib_rel = "{}/{}.csim.so".format(rel_dir, gid)
    shutil.copyfile(os.path.join(project, "firmware", libs[0]), os.path.join(root, *lib_rel.split("/")))
    tar_rel = "{}/{}.hls.tar.gz".format(rel_dir, gid)
    _pack_project(project, os.path.join(root, *tar_rel.split("/")), name)
    outs = predict(hm, x)
    in_shapes = [list(v.shape) for v in hm.get_input_variables()]
    out_shapes = [list(v.shape) for v in hm.get_output_variables()]
    expected = reference.run([feed[n] for n in entry["inputs"]])
    errors = [float(np.abs(hls_layout(e, "NHWC") - np.asarray(o).reshape(len(o), -1)).max())
              for e, o in zip(expected, outs)]
    return {
        "file": lib_rel, "format": "fpga-csim", "precision": "fixed", "device": board.name,
        "arch": platform.machine(), "artifact": "shared-library", "processor": "cpu",
        "hls": {"project": tar_rel, "function": name + "_float", "io_type": io_type,
                "hls4ml": hls4ml.__version__, "part": board.fabric.part,
                "clock_mhz": board.fabric.clock_mhz, "reuse_factor": reuse,
                "strategy": strategy, "source": source,
                "input_layout": ["NHWC" if len(s) == 3 else "flat" for s in in_shapes],
                "output_layout": ["NHWC" if len(s) == 3 else "flat" for s in out_shapes],
                "input_shapes": in_shapes, "output_shapes": out_shapes,
                "precision": {"chosen_from": "quantizers and calibration data" if quantized
                              else "calibration data ({} bits)".format(width),
                              "layers": _layer_types(layers), "set": plan},
                "max_abs_error_vs_onnxruntime": max(errors),
                "calibration_samples": int(len(x[0]))},
        "estimate": cost,
    }


def _layer_types(layers):
    return {l.name: {k: str(v.precision) for k, v in l.types.items() if k in (
        "result_t", "weight_t", "bias_t", "accum_t")} for l in layers}


def _pack_project(project, dest, name):
    """The HLS project as a .tar.gz (without the C-simulation library, shipped beside it)."""
    with tarfile.open(dest, "w:gz") as tar:
        for d, _, files in os.walk(project):
            for f in sorted(files):
                if f.endswith(".so") or f.endswith(".o"):
                    continue
                full = os.path.join(d, f)
                tar.add(full, arcname=os.path.join(name, os.path.relpath(full, project)))


def register_bitstreams(bundle_path, target, folder):
    """Add the bitstreams a user built with Vitis from the bundle's HLS projects (one
    ``GRAPH.bit`` with its ``GRAPH.hwh`` per graph in ``folder``, hls4ml's accelerator wrapper
    with an AXI DMA) as ``pynq`` builds for ``target``'s ARM cores. Every graph needs one;
    the C-simulation build of each graph must exist (its layouts and shapes are reused)."""
    board = get_target(target)
    with edit_bundle(bundle_path) as draft:
        manifest = draft.manifest
        missing = [e["id"] for e in graph_entries(manifest) for ext in (".bit", ".hwh")
                   if not os.path.isfile(os.path.join(folder, e["id"] + ext))]
        if missing:
            raise InputError("{} lacks {}: every graph needs GRAPH.bit and GRAPH.hwh".format(
                folder, ", ".join(sorted(set(missing)))))
        files = []
        for entry in graph_entries(manifest):
            csim = [b for b in entry.get("builds") or [] if b["format"] == "fpga-csim"
                    and b.get("device") == target]
            if not csim:
                raise InputError("graph '{}' has no C-simulation build for {}: run "
                                 "edgesdk build --toolchain hls4ml first".format(entry["id"], target))
            rel = "{}/{}/{}.bit".format(HLS_DIR, target, entry["id"])
            for ext in (".bit", ".hwh"):
                shutil.copyfile(os.path.join(folder, entry["id"] + ext), draft.path(rel[:-4] + ext))
                files.append(rel[:-4] + ext)
            entry["builds"] = [b for b in entry["builds"] if not (
                b["format"] == "pynq" and b.get("device") == target)] + [{
                    "file": rel, "format": "pynq", "precision": "fixed", "device": target,
                    "arch": board.arch, "processor": "fpga", "artifact": "bitstream",
                    "hls": csim[0]["hls"], "pynq": {"dma": "axi_dma_0"}}]
        draft.add_files(files)
