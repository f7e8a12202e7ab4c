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
and the resource and latency estimate (:mod:`.fpga_estimate`).
"""
import contextlib
import io
import json
import math
import os
import platform
import re
import shutil
import tarfile
import tempfile
import types

import numpy as np

from edgesdk import bundle as bundle_io
from edgesdk.converters.builds import fp32_file
from edgesdk.converters.fpga_estimate import estimate, over_budget
from edgesdk.deps import require
from edgesdk.errors import BuildError, CalibrationError, InputError, UnsupportedOpError
from edgesdk.manifest import graph_entries
from edgesdk.runtime.executors.fpga_csim import hls_layout
from edgesdk.targets import get_target

HLS_DIR = "fpga"
WIDE = "fixed<32,16>"  # wide enough to trace float graphs without clipping
MAX_SAMPLES = 256


def hls4ml_module():
    """The hls4ml package (``fpga`` extra)."""
    return require("hls4ml", "fpga", "build HLS projects")


def project_name(gid):
    """A C identifier for a graph id (the HLS top function is ``NAME`` / ``NAME_float``)."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", gid)
    return name if name[0].isalpha() else "g_" + name


def channels_last(model):
    """The qonnx ModelWrapper of ``model`` (ONNX or QONNX) as hls4ml reads it: cleaned,
    channels-last with an NHWC input, Gemm as MatMul, and no trailing Transpose."""
    require("qonnx", "qat", "prepare graphs for hls4ml")
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.channels_last import ConvertToChannelsLastAndClean
    from qonnx.transformation.gemm_to_matmul import GemmToMatMul
    from qonnx.util.cleanup import cleanup_model
    copy = pooling_as_conv(model)
    with _qonnx_sessions(onnx):
        mw = cleanup_model(ModelWrapper(copy))
        mw = mw.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
        mw = cleanup_model(mw.transform(GemmToMatMul()))
    _drop_output_transposes(mw)
    return mw


@contextlib.contextmanager
def _qonnx_sessions(onnx):
    """qonnx folds constants by running single-node models in ONNX Runtime sessions of its
    own. Two things break those here, so while qonnx runs:
    - onnx 1.23 stamps the models IR version 14, which onnxruntime 1.31 refuses: new models
      get IR version 10 (onnx 1.16: opsets up to 21) at most;
    - ONNX Runtime refuses sessions with their own thread pools once edgesdk's process-wide
      pool exists (a bundle was run or converted in this process): qonnx's sessions are made
      by edgesdk, on that pool."""
    from qonnx.core import onnx_exec
    from edgesdk.runtime.executors.ort import make_session
    make_model, runtime = onnx.helper.make_model, onnx_exec.rt

    def readable(graph, **kwargs):
        model = make_model(graph, **kwargs)
        model.ir_version = min(model.ir_version, 10)
        return model
    onnx.helper.make_model = readable
    onnx_exec.rt = types.SimpleNamespace(InferenceSession=lambda model, *a, **k: make_session(model))
    try:
        yield
    finally:
        onnx.helper.make_model, onnx_exec.rt = make_model, runtime


def pooling_as_conv(model):
    """A copy of ``model`` with AveragePool / GlobalAveragePool (what a static adaptive
    average pool exports to) as a Conv whose weights average each channel: qonnx's
    channels-last conversion does not handle average pooling, so hls4ml cannot map it.
    Exact: every output is the same mean of the same inputs."""
    import onnx
    from onnx import numpy_helper
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(out).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.value_info) + list(inferred.input)}
    nodes = []
    for node in out.graph.node:
        if node.op_type not in ("AveragePool", "GlobalAveragePool"):
            nodes.append(node)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0])
        if not shape or len(shape) != 4 or 0 in shape[1:] or any(attrs.get("pads", [0])):
            nodes.append(node)  # dynamic or padded: left for hls4ml to report
            continue
        channels = shape[1]
        kernel = shape[2:] if node.op_type == "GlobalAveragePool" else list(attrs["kernel_shape"])
        weight = np.zeros([channels, channels] + kernel, dtype=np.float32)
        weight[np.arange(channels), np.arange(channels)] = 1.0 / float(np.prod(kernel))
        name = node.output[0] + "__avg_weight"
        out.graph.initializer.append(numpy_helper.from_array(weight, name))
        nodes.append(onnx.helper.make_node(
            "Conv", [node.input[0], name], list(node.output), name=(node.name or name) + "_conv",
            kernel_shape=kernel, strides=list(attrs.get("strides", kernel)),
            dilations=[1, 1], group=1, pads=[0, 0, 0, 0]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _drop_output_transposes(mw):
    """A Transpose that only turns an output back to NCHW costs a buffer on the FPGA; the
    ARM core can do it. Drop it and let the output be NHWC."""
    graph = mw.graph
    for out in graph.output:
        node = mw.find_producer(out.name)
        if node is None or node.op_type != "Transpose" or len(mw.find_consumers(out.name)):
            continue
        src = node.input[0]
        shape = mw.get_tensor_shape(src)
        graph.node.remove(node)
        out.name = src
        del out.type.tensor_type.shape.dim[:]
        for d in shape:
            out.type.tensor_type.shape.dim.add().dim_value = d


def _integer_bits(low, high):
    """Integer bits of an unsigned type that holds max(|low|, |high|) (0 for all zeros)."""
    peak = max(abs(float(low)), abs(float(high)))
    return int(math.floor(math.log2(peak))) + 1 if peak > 0 else 0


def fixed_type(low, high, width):
    """The narrowest-integer ``fixed``/``ufixed`` of ``width`` bits that holds [low, high]."""
    integer = _integer_bits(low, high) if (low or high) else 1
    if low >= 0:
        return "ufixed<{},{},RND_CONV,SAT>".format(width, integer)
    return "fixed<{},{},RND_CONV,SAT>".format(width, integer + 1)


def grid_type(values, width):
    """The exact fixed-point type of values already on a power-of-two grid (a quantized
    stage's output feeding the next graph), or None if they are not within ``width`` bits."""
    values = np.asarray(values, dtype=np.float64)
    for frac in range(0, 17):
        scaled = values * 2.0 ** frac
        if np.all(scaled == np.round(scaled)):
            low, high = float(values.min()), float(values.max())
            integer = _integer_bits(low, high)
            bits = integer + frac + (0 if low >= 0 else 1)
            if bits > width:
                return None
            return ("ufixed<{},{}>" if low >= 0 else "fixed<{},{}>").format(
                max(bits, 1), integer + (0 if low >= 0 else 1))
    return None


def type_range(text):
    """``(low, high)`` that a ``fixed<W,I>``/``ufixed<W,I>`` type holds."""
    m = re.match(r"\s*(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)", str(text))
    if not m:
        return None
    unsigned, width, integer = m.group(1) == "u", int(m.group(2)), int(m.group(3))
    step = 2.0 ** (integer - width)
    if unsigned:
        return 0.0, 2.0 ** integer - step
    return -2.0 ** (integer - 1), 2.0 ** (integer - 1) - step


def _io_type(mw, head):
    """Stages with convolutions stream their feature maps; heads (pooling and a dense layer
    on a small map) and dense-only graphs run in parallel."""
    if head or not any(n.op_type == "Conv" for n in mw.graph.node):
        return "io_parallel"
    return "io_stream"


def _convert(hls4ml, mw, cfg, out_dir, board, io_type, name):
    """hls4ml's model for ``mw`` with ``cfg``; hls4ml's errors become BuildError."""
    fabric = board.fabric
    try:
        return _silently(
            hls4ml.converters.convert_from_onnx_model,
            mw, hls_config=cfg, output_dir=out_dir, project_name=name,
            backend=fabric.hls_backend, io_type=io_type, part=fabric.part,
            clock_period=round(1000.0 / fabric.clock_mhz, 3), write_weights_txt=False)
    except Exception as exc:  # hls4ml raises plain Exceptions
        raise BuildError("hls4ml could not convert {}: {}".format(name, exc))


def unsupported_layers(graphs):
    """``[(graph id, message)]`` for every graph hls4ml refuses to configure."""
    hls4ml = hls4ml_module()
    found = []
    for gid, mw in graphs.items():
        try:
            _silently(hls4ml.utils.config_from_onnx_model, mw, granularity="name",
                      backend="Vitis")
        except Exception as exc:
            found.append((gid, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    return found


def _silently(fn, *args, **kwargs):
    """hls4ml prints its topology and compiler output to stdout; keep it out of the CLI."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _predict(hm, arrays):
    out = _silently(hm.predict, arrays[0] if len(arrays) == 1 else arrays)
    return out if isinstance(out, list) else [out]


def choose_precision(hls4ml, mw, gid, name, board, io_type, x, width, quantized, overrides,
                     work):
    """The hls4ml config with types from data (see the module doc); ``overrides``: ``{layer:
    type}`` given by hand (hls4ml config names, the ONNX node names), checked against the
    calibration data. Returns ``(config, plan, traced ranges)``."""
    cfg = _silently(hls4ml.utils.config_from_onnx_model, mw, granularity="name",
                    backend="Vitis", default_precision="fixed<{},8>".format(width))
    layers = cfg["LayerName"]
    unknown = sorted(set(overrides) - set(layers))
    if unknown:
        raise InputError("{} has no layer(s) {}; its layers: {}".format(
            gid, ", ".join(unknown), ", ".join(layers)))
    ranges = {}
    inputs = [i.name for i in mw.graph.input]
    for n, a in zip(inputs, x):
        ranges[n] = (float(a.min()), float(a.max()))
    if not quantized or overrides:
        ranges_traced, params = trace_ranges(hls4ml, mw, cfg, x, board, io_type, name, work)
        ranges.update(ranges_traced)
    else:
        params = _parameters(_convert(hls4ml, mw, cfg, os.path.join(work, "probe"), board,
                                      io_type, name), mw)
    plan = {}
    for lname, layer in layers.items():
        prec = layer.get("Precision")
        values = params.get(lname, {})
        if lname in overrides:
            chosen = {"result": overrides[lname]}
        elif lname in inputs:
            lo, hi = ranges[lname]
            exact = grid_type(x[inputs.index(lname)], width) if quantized else None
            chosen = {"result": exact or fixed_type(lo, hi, width)}
        elif quantized:
            # The weights keep their quantizers' widths (hls4ml reads them from the Quant
            # nodes); a bias without a quantizer (Brevitas' default) and the scales of the
            # layers hls4ml adds to rescale per-channel weights get the exact type of their
            # values: hls4ml's default fixed<W,8> rounded a 2^-13 scale of 8-bit weights to 0.
            chosen = {k: _value_type(v, width) for k, v in values.items() if k != "weight"}
            if not chosen:
                continue
        elif lname in ranges:
            chosen = {"result": fixed_type(*ranges[lname], width=width)}
            chosen.update({k: _value_type(v, width) for k, v in values.items()})
        else:
            continue
        if isinstance(prec, dict):
            prec.update(chosen)
        else:
            layer["Precision"] = chosen
        plan.update({lname if k == "result" else "{}.{}".format(lname, k): v
                     for k, v in chosen.items()})
    _check_overflow(gid, plan, ranges)
    return cfg, plan, ranges


def trace_ranges(hls4ml, mw, cfg, x, board, io_type, name, work):
    """Value ranges on ``x`` of every layer's output, traced through the C simulation at
    ``fixed<32,16>``, and every layer's weights and biases: ``({config name: (low, high)},
    {config name: {"weight"|"bias": values}})``."""
    wide = json.loads(json.dumps(cfg))
    for layer in wide["LayerName"].values():
        # weight and bias too: hls4ml's default would round small weights while tracing
        layer["Precision"] = {k: WIDE for k in list(layer.get("Precision") or {"result": 0}) +
                              ["weight", "bias"]}
        layer["Trace"] = True
    hm = _convert(hls4ml, mw, wide, os.path.join(work, "wide"), board, io_type, name)
    _unoptimized(hm)
    _, traced = _silently(hm.trace, x[0] if len(x) == 1 else x)
    names = _config_names(hm, mw)
    ranges = {names.get(k, k): (float(v.min()), float(v.max())) for k, v in traced.items()}
    return ranges, _parameters(hm, mw)


def _config_names(hm, mw):
    """hls4ml layer name -> config name: hls4ml renames the layers it lowers (``Conv_0``
    becomes ``Conv2D_Conv_0``) but keeps their output tensors, which name the ONNX node."""
    producer = {out: n.name for n in mw.graph.node for out in n.output}
    return {l.name: producer.get(l.outputs[0], l.name) if l.outputs else l.name
            for l in hm.get_layers()}


def _parameters(hm, mw):
    """``{config name: {"weight"|"bias"|"scale": values}}`` of the layers of ``hm`` that have
    them."""
    names, found = _config_names(hm, mw), {}
    for l in hm.get_layers():
        for kind in ("weight", "bias", "scale"):
            w = l.weights.get(kind)
            if w is not None and np.size(w.data):
                found.setdefault(names[l.name], {})[kind] = np.asarray(w.data, np.float64)
    return found


def _value_type(values, width):
    """The type of constant ``values``: exact when they lie on a power-of-two grid within
    ``width`` bits, else ``width`` bits with the integer bits their range needs."""
    exact = grid_type(values, width) if np.any(values) else None
    return exact or fixed_type(float(np.min(values)), float(np.max(values)), width)


def _unoptimized(hm):
    """Compile ``hm`` at -O0: the trace build runs once on a few hundred samples, and g++ at
    -O3 spends minutes on hls4ml's unrolled templates with large weight arrays."""
    write = hm.write

    def write_then_patch():
        write()
        script = os.path.join(hm.config.get_output_dir(), "build_lib.sh")
        with open(script) as f:
            text = f.read()
        with open(script, "w") as f:
            f.write(text.replace('CFLAGS="-O3 ', 'CFLAGS="-O0 '))
    hm.write = write_then_patch


def _check_overflow(gid, plan, ranges):
    bad = []
    for lname, text in plan.items():
        held, seen = type_range(text), ranges.get(lname)
        if held and seen and (seen[0] < held[0] or seen[1] > held[1]):
            bad.append("layer '{}' of {}: the calibration data reaches [{:.4g}, {:.4g}], its type "
                       "{} holds [{:.4g}, {:.4g}]".format(lname, gid, seen[0], seen[1], text,
                                                         held[0], held[1]))
    if bad:
        raise CalibrationError("the precision plan overflows on the calibration data:\n  {}\n"
                               "Give these layers more integer bits, or leave them to edgesdk "
                               "(types from data)".format("\n  ".join(bad)))


def _pack_project(project, dest, name):
    """The HLS project as a .tar.gz (without the C-simulation library, shipped beside it)."""
    with tarfile.open(dest, "w:gz") as tar:
        for d, _, files in os.walk(project):
            for f in sorted(files):
                if f.endswith(".so") or f.endswith(".o"):
                    continue
                full = os.path.join(d, f)
                tar.add(full, arcname=os.path.join(name, os.path.relpath(full, project)))


def build_fpga(bundle_path, target="ultra96-v2", calibration_data=None, width=16,
               reuse_factor=1, precision=None, progress=True):
    """Build every stage and head of the bundle with hls4ml for an FPGA ``target`` and record
    the builds (format ``fpga-csim``; see the module doc). ``calibration_data``: model inputs
    (default: the bundle's reference inputs), run through the bundle to get every graph's
    inputs. ``width``: total bits of the types chosen from data. ``reuse_factor``: hls4ml's
    (1: fully parallel). ``precision``: ``{graph id: {layer: type}}`` set by hand. The bundle
    is rewritten in a staging copy. Returns the build records."""
    from edgesdk.converters.builds import graph_inputs
    from edgesdk.progress import Progress
    from edgesdk.runtime.engine import EdgeModel
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
    bundle = bundle_io.read_bundle(bundle_path)
    entries = graph_entries(bundle.manifest)
    precision = precision or {}
    x = _calibration_inputs(bundle, calibration_data)
    sources, graphs = {}, {}
    for e in entries:
        quantized = bool(e.get("qonnx"))
        sources[e["id"]] = e["qonnx"]["file"] if quantized else fp32_file(e)
        graphs[e["id"]] = channels_last(onnx.load(bundle.path(sources[e["id"]])))
    model = EdgeModel(bundle, builds=("onnx", "fp32")) if not any(
        e.get("qonnx") for e in entries) else EdgeModel(bundle)
    feeds = graph_inputs(model, x)
    m = bundle.manifest
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
        with bundle_io.rewrite_bundle(bundle.root) as tmp, \
                Progress(len(entries), "hls4ml " + target, enabled=progress) as bar:
            out_dir = os.path.join(tmp, HLS_DIR, target)
            shutil.rmtree(out_dir, ignore_errors=True)
            os.makedirs(out_dir)
            for e in entries:
                records[e["id"]] = _build_graph(
                    hls4ml, e, graphs[e["id"]], board, feeds[e["id"]], width, reuse_factor,
                    precision.get(e["id"], {}), work, tmp, sources[e["id"]],
                    onnxruntime[e["id"]])
                bar.update(note=e["id"])
            manifest = bundle_io.read_bundle(tmp, verify=False).manifest
            for entry in graph_entries(manifest):
                builds = entry.get("builds") or [{"file": entry["file"], "format": entry["format"],
                                                  "precision": entry.get("precision", "fp32")}]
                entry["builds"] = [b for b in builds if b.get("device") != target] + \
                    [records[entry["id"]]]
            stale = [f for f in manifest["files"] if f.startswith("{}/{}/".format(HLS_DIR, target))]
            for f in stale:
                del manifest["files"][f]
            manifest["files"].update(bundle_io.hash_files(tmp, sorted(
                f for r in records.values() for f in (r["file"], r["hls"]["project"]))))
            manifest["provenance"]["passes"].append(
                {"name": "hls4ml-build", "device": target, "hls4ml": hls4ml.__version__,
                 "width": width, "reuse_factor": reuse_factor})
            total = {k: sum(r["estimate"][k] for r in records.values())
                     for k in ("dsp", "lut", "ff", "bram_18k")}
            manifest.setdefault("fpga", {})[target] = {
                "estimate": dict(total, label=records[entries[0]["id"]]["estimate"]["label"]),
                "budget": board.fabric.budget(), "part": board.fabric.part,
                "fits": not over_budget(total, board.fabric, reuse_factor, "all graphs"),
                "over": over_budget(total, board.fabric, reuse_factor, "all graphs together")}
            bundle_io.write_manifest(tmp, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [records[e["id"]] for e in entries]


def _calibration_inputs(bundle, data):
    if data is None:
        ref = bundle.manifest.get("reference")
        if not ref:
            raise InputError("FPGA builds need calibration inputs (calibration_data / "
                             "--calibration-data): the bundle has no reference inputs")
        with np.load(bundle.path(ref["file"]), allow_pickle=False) as z:
            data = z["input"]
    x = np.asarray(data[0] if isinstance(data, tuple) else data)
    if x.dtype.kind != "f" or len(x) == 0 or not np.isfinite(x).all():
        raise InputError("calibration data must be finite float model inputs with a batch "
                         "dimension, got {} {}".format(x.dtype, list(x.shape)))
    return np.ascontiguousarray(x[:MAX_SAMPLES], dtype=np.float32)


def _build_graph(hls4ml, entry, mw, board, feed, width, reuse, overrides, work, root, source,
                 reference):
    """Convert, compile, package and check one graph; returns its build record."""
    gid = entry["id"]
    name = project_name(gid)
    io_type = _io_type(mw, head=entry.get("after_stage") is not None)
    x = [hls_layout(feed[n], "NHWC") for n in entry["inputs"]]
    quantized = bool(entry.get("qonnx"))
    cfg, plan, ranges = choose_precision(hls4ml, mw, gid, name, board, io_type, x, width,
                                         quantized, overrides, os.path.join(work, gid))
    cfg["Model"]["ReuseFactor"] = reuse
    for layer in cfg["LayerName"].values():
        if "ReuseFactor" in layer:
            layer["ReuseFactor"] = reuse
    project = os.path.join(work, gid, "project")
    hm = _convert(hls4ml, mw, cfg, project, board, io_type, name)
    layers = list(hm.get_layers())
    cost = estimate(layers, board.fabric, io_type)
    over = over_budget(cost, board.fabric, reuse, gid)
    if over:
        raise BuildError("{} does not fit {} (estimate):\n  {}".format(
            gid, board.name, "\n  ".join(over)))
    try:
        _silently(hm.compile)
    except Exception as exc:
        raise BuildError("g++ could not build the C simulation of {}: {}".format(gid, exc))
    libs = [f for f in os.listdir(os.path.join(project, "firmware")) if f.endswith(".so")]
    rel_dir = "{}/{}".format(HLS_DIR, board.name)
    lib_rel = "{}/{}.csim.so".format(rel_dir, gid)
    shutil.copyfile(os.path.join(project, "firmware", libs[0]), os.path.join(root, *lib_rel.split("/")))
    tar_rel = "{}/{}.hls.tar.gz".format(rel_dir, gid)
    _pack_project(project, os.path.join(root, *tar_rel.split("/")), name)
    outs = _predict(hm, x)
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
                "clock_mhz": board.fabric.clock_mhz, "reuse_factor": reuse, "source": source,
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


def register_bitstreams(bundle_path, target, folder):
    """Add the bitstreams a user built with Vitis from the bundle's HLS projects (one
    ``GRAPH.bit`` with its ``GRAPH.hwh`` per graph in ``folder``, hls4ml's accelerator wrapper
    with an AXI DMA) as ``pynq`` builds for ``target``'s ARM cores. Every graph needs one;
    the C-simulation build of each graph must exist (its layouts and shapes are reused)."""
    board = get_target(target)
    bundle = bundle_io.read_bundle(bundle_path)
    entries = graph_entries(bundle.manifest)
    missing = [e["id"] for e in entries for ext in (".bit", ".hwh")
               if not os.path.isfile(os.path.join(folder, e["id"] + ext))]
    if missing:
        raise InputError("{} lacks {}: every graph needs GRAPH.bit and GRAPH.hwh".format(
            folder, ", ".join(sorted(set(missing)))))
    with bundle_io.rewrite_bundle(bundle.root) as tmp:
        manifest = bundle_io.read_bundle(tmp, verify=False).manifest
        files = []
        for entry in graph_entries(manifest):
            csim = [b for b in entry.get("builds") or [] if b["format"] == "fpga-csim"
                    and b.get("device") == target]
            if not csim:
                raise InputError("graph '{}' has no C-simulation build for {}: run "
                                 "edgesdk build --toolchain hls4ml first".format(entry["id"], target))
            rel = "{}/{}/{}.bit".format(HLS_DIR, target, entry["id"])
            for ext in (".bit", ".hwh"):
                shutil.copyfile(os.path.join(folder, entry["id"] + ext),
                                os.path.join(tmp, *(rel[:-4] + ext).split("/")))
                files.append(rel[:-4] + ext)
            entry["builds"] = [b for b in entry["builds"] if not (
                b["format"] == "pynq" and b.get("device") == target)] + [{
                    "file": rel, "format": "pynq", "precision": "fixed", "device": target,
                    "arch": board.arch, "processor": "fpga", "artifact": "bitstream",
                    "hls": csim[0]["hls"], "pynq": {"dma": "axi_dma_0"}}]
        manifest["files"].update(bundle_io.hash_files(tmp, files))
        bundle_io.write_manifest(tmp, manifest)
