"""Models that arrive quantized: PyTorch quantization-aware training (fake quantization).

The TorchScript exporter turns PyTorch's fake-quantize modules into ONNX QuantizeLinear /
DequantizeLinear pairs (per-channel weights need opset >= 13), which ONNX Runtime fuses into
integer kernels and TensorRT reads as explicit INT8. Such a model is converted as it is: its
graphs are the INT8 builds, nothing is quantized again, and every Q/DQ node is checked (scale
positive and finite, zero point of an 8-bit type, or int32 for a bias, within range; a valid
per-channel axis), all problems reported at once.
"""
import numpy as np

from edgesdk.deps import require
from edgesdk.errors import ConversionError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Fake quantization runs in float; ORT's integer kernels requantize each output, so the
# two may differ by about one quantization step of the logits.
QAT_ATOL = 0.25
QAT_RTOL = 0.05


def quantization_aware_kind(model):
    """``"brevitas"`` (Brevitas quantized layers), ``"torch"`` (PyTorch fake-quantize
    modules) or None: how the model was trained to be quantized."""
    torch = require("torch", "torch", "inspect models")
    fake = torch.ao.quantization.FakeQuantizeBase
    kinds = set()
    for m in model.modules():
        if type(m).__module__.startswith("brevitas."):
            kinds.add("brevitas")
        elif isinstance(m, fake):
            kinds.add("torch")
    return "brevitas" if "brevitas" in kinds else ("torch" if kinds else None)


def export_brevitas(module, args, kwargs):
    """Export a module with Brevitas layers as QONNX (TorchScript path) and convert it to
    QCDQ (QuantizeLinear-Clip-DequantizeLinear, what ONNX Runtime and TensorRT read) with
    the qonnx package. Returns ``(qonnx ModelProto, qcdq ModelProto)``; Quant nodes wider
    than 8 bits, which QCDQ cannot express, are refused."""
    import os
    import tempfile
    onnx = require("onnx", "onnx", "export Brevitas models")
    brevitas_export = require("brevitas.export", "qat", "export Brevitas models")
    require("onnxoptimizer", "qat", "export Brevitas models")
    ModelWrapper = require("qonnx.core.modelwrapper", "qat", "convert QONNX").ModelWrapper
    QuantToQCDQ = require("qonnx.transformation.qonnx_to_qcdq", "qat", "convert QONNX").QuantToQCDQ
    tmp = tempfile.mkdtemp(prefix="edgesdk-qonnx-")
    try:
        path = os.path.join(tmp, "graph.onnx")
        brevitas_export.export_qonnx(module, args, path, dynamo=False, **kwargs)
        source = onnx.load(path)
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    qcdq = ModelWrapper(copy_model(source)).transform(QuantToQCDQ()).model
    left = [n.name or n.output[0] for n in qcdq.graph.node if n.op_type in ("Quant", "BipolarQuant")]
    if left:
        raise ConversionError("QONNX Quant nodes wider than 8 bits (or otherwise not expressible "
                              "as QuantizeLinear/Clip/DequantizeLinear): {}".format(", ".join(left)))
    return source, qcdq


def copy_model(model):
    """A deep copy of an ONNX ModelProto."""
    copied = type(model)()
    copied.CopyFrom(model)
    return copied


def quant_bit_widths(qonnx_model):
    """Sorted distinct bit widths of the QONNX graph's Quant nodes (weights and activations)."""
    from onnx import numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in qonnx_model.graph.initializer}
    for n in qonnx_model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return sorted({int(consts[n.input[3]]) for n in qonnx_model.graph.node
                   if n.op_type == "Quant" and len(n.input) > 3 and n.input[3] in consts})


def frozen_copy(model):
    """A copy of a quantization-aware model with its observers off: scales and zero points
    stay as trained, instead of following every batch the exporter and the checks run."""
    import copy
    torch = require("torch", "torch", "export quantization-aware models")
    fused = [n for n, m in model.named_modules()
             if isinstance(m, torch.ao.quantization.FusedMovingAvgObsFakeQuantize)]
    if fused:
        from edgesdk.errors import InputError
        raise InputError("{} use FusedMovingAvgObsFakeQuantize, which does not export to ONNX "
                         "(aten::fused_moving_avg_obs_fake_quant): prepare the model with plain "
                         "FakeQuantize, e.g. qconfig = torch.ao.quantization."
                         "get_default_qat_qconfig('x86', version=0)".format(", ".join(fused[:5])))
    frozen = copy.deepcopy(model)
    frozen.apply(torch.ao.quantization.disable_observer)
    return frozen


def count_qdq(graph):
    """Number of QuantizeLinear/DequantizeLinear nodes in an ONNX ModelProto."""
    return sum(n.op_type in QDQ_OPS for n in graph.graph.node)


def check_qdq(graph, where):
    """Problems of the Q/DQ nodes of an ONNX ModelProto, each naming the node."""
    from onnx import numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    for n in graph.graph.node:  # the exporter writes some scales as Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    problems = []
    for node in graph.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        name = "{} {} '{}'".format(where, node.op_type, node.name or node.output[0])
        scale = consts.get(node.input[1])
        if scale is None:
            problems.append(name + ": scale is not a constant")
        elif not (np.isfinite(scale).all() and (scale > 0).all()):
            problems.append(name + ": scale must be positive and finite")
        zp = consts.get(node.input[2]) if len(node.input) > 2 else None
        if zp is not None and zp.dtype not in (np.int8, np.uint8, np.int32):
            problems.append(name + ": zero point is {}, expected int8 or uint8".format(zp.dtype))
        axis = [a.i for a in node.attribute if a.name == "axis"]
        if scale is not None and scale.size > 1 and axis and not -4 <= axis[0] < 4:
            problems.append(name + ": per-channel axis {} is out of range".format(axis[0]))
    return problems


def validate_qat_graphs(graphs):
    """Check ``{graph id: ModelProto}`` of a quantization-aware model; returns the Q/DQ count
    per graph. Raises ConversionError listing every problem."""
    counts = {gid: count_qdq(g) for gid, g in graphs.items()}
    problems = []
    if not any(counts.values()):
        problems.append("the model has fake-quantize modules but no graph holds Q/DQ nodes "
                        "after export (were observers converted or disabled?)")
    for gid, g in graphs.items():
        problems += check_qdq(g, gid)
    if problems:
        raise ConversionError("quantization-aware model:\n  " + "\n  ".join(problems))
    return counts
