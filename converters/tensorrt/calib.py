"""TensorRT's legacy INT8 calibration cache, written from edgesdk's own calibration.

The text format ``trtexec --int8 --calib=FILE`` and ``IInt8Calibrator.read_calibration_cache``
read: a header line ``TRT-<version>-EntropyCalibration2``, then one ``<tensor>: <hex>`` line
per tensor, where ``<hex>`` is the IEEE-754 bits of the float32 scale (dynamic range / 127)
as 8 lowercase hex digits. The scales come from the activation quantizers of the bundle's
symmetric INT8 build (ONNX Runtime's calibration on the user's data): the input of every
QuantizeLinear is a tensor of the FP32 graph, which TensorRT names the same.
"""
import struct

import numpy as np

from edgesdk.deps import require
from edgesdk.errors import ConversionError

ALGORITHM = "EntropyCalibration2"
RANGE_KEEPING = ("Relu", "MaxPool", "Reshape", "Flatten", "Transpose", "Identity", "Squeeze",
                 "Unsqueeze")


def scale_hex(scale):
    """The 8 hex digits of a positive float32 scale, as TensorRT writes it."""
    value = np.float32(scale)
    if not np.isfinite(value) or value <= 0:
        raise ConversionError("calibration scale {!r} is not a positive finite float".format(scale))
    return struct.pack(">f", value).hex()


def cache_text(scales, version):
    """The calibration cache for ``scales`` (``[(tensor name, scale)]``, in order) with the
    header of TensorRT ``version`` (e.g. ``8201``)."""
    lines = ["TRT-{}-{}".format(version, ALGORITHM)]
    for name, scale in scales:
        if not name or ":" in name or "\n" in name:
            raise ConversionError("tensor name {!r} cannot be written to a calibration cache"
                                  .format(name))
        lines.append("{}: {}".format(name, scale_hex(scale)))
    return "\n".join(lines) + "\n"


def activation_scales(int8_model, fp32_model):
    """``[(tensor, scale)]`` of every activation quantizer in the QDQ ``int8_model`` whose input
    is a tensor of ``fp32_model``, in the FP32 graph's order. Per-tensor scales only (TensorRT
    calibrates activations per tensor)."""
    require("onnx", "onnx", "write calibration caches")
    from onnx import numpy_helper
    init = {t.name: t for t in int8_model.graph.initializer}
    found = {}
    for node in int8_model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in init:
            continue
        scale = numpy_helper.to_array(init[node.input[1]]) if node.input[1] in init else None
        if scale is None or scale.size != 1:
            raise ConversionError("QuantizeLinear '{}' has no per-tensor constant scale".format(
                node.name))
        found[node.input[0]] = float(scale.reshape(()))
    # Ops that only move or clip values keep their input's range: TensorRT fuses them with the
    # producer (Conv+Relu) and still wants a scale for their output.
    for node in fp32_model.graph.node:
        if node.op_type in RANGE_KEEPING and node.input and node.input[0] in found:
            for out in node.output:
                found.setdefault(out, found[node.input[0]])
    order = [i.name for i in fp32_model.graph.input] + [
        o for n in fp32_model.graph.node for o in n.output]
    return [(name, found[name]) for name in order if name in found]
