"""Data-driven precision: every layer's fixed-point type from the values it produces on
calibration data (a float graph traced at a wide type) or from a QONNX graph's quantizers,
and a hand-given type refused where the calibration data overflows it.
"""
import json
import os

import numpy as np

from edgesdk.converters.hls4ml.driver import convert_graph, silently, unoptimized
from edgesdk.converters.hls4ml.fixed_point import fixed_type, grid_type, type_range, value_type
from edgesdk.errors import CalibrationError, InputError


WIDE = "fixed<32,16>"  # wide enough to trace float graphs without clipping


def choose_precision(hls4ml, mw, gid, name, board, io_type, x, width, quantized, overrides,
                     work):
    """The hls4ml config with types from data (see the module doc); ``overrides``: ``{layer:
    type}`` given by hand (hls4ml config names, the ONNX node names), checked against the
    calibration data. Returns ``(config, plan, traced ranges)``."""
    cfg = silently(hls4ml.utils.config_from_onnx_model, mw, granularity="name",
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
        params = parameters(convert_graph(hls4ml, mw, cfg, os.path.join(work, "probe"), board,
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
            chosen = {k: value_type(v, width) for k, v in values.items() if k != "weight"}
            if not chosen:
                continue
        elif lname in ranges:
            chosen = {"result": fixed_type(*ranges[lname], width=width)}
            chosen.update({k: value_type(v, width) for k, v in values.items()})
        else:
            continue
        if isinstance(prec, dict):
            prec.update(chosen)
        else:
            layer["Precision"] = chosen
        plan.update({lname if k == "result" else "{}.{}".format(lname, k): v
                     for k, v in chosen.items()})
    check_overflow(gid, plan, ranges)
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
    hm = convert_graph(hls4ml, mw, wide, os.path.join(work, "wide"), board, io_type, name)
    unoptimized(hm)
    _, traced = silently(hm.trace, x[0] if len(x) == 1 else x)
    names = config_names(hm, mw)
    ranges = {names.get(k, k): (float(v.min()), float(v.max())) for k, v in traced.items()}
    return ranges, parameters(hm, mw)


def config_names(hm, mw):
    """hls4ml layer name -> config name: hls4ml renames the layers it lowers (``Conv_0``
    becomes ``Conv2D_Conv_0``) but keeps their output tensors, which name the ONNX node."""
    producer = {out: n.name for n in mw.graph.node for out in n.output}
    return {l.name: producer.get(l.outputs[0], l.name) if l.outputs else l.name
            for l in hm.get_layers()}


def parameters(hm, mw):
    """``{config name: {"weight"|"bias"|"scale": values}}`` of the layers of ``hm`` that have
    them."""
    names, found = config_names(hm, mw), {}
    for l in hm.get_layers():
        for kind in ("weight", "bias", "scale"):
            w = l.weights.get(kind)
            if w is not None and np.size(w.data):
                found.setdefault(names[l.name], {})[kind] = np.asarray(w.data, np.float64)
    return found


def check_overflow(gid, plan, ranges):
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
