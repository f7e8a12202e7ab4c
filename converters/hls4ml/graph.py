"""ONNX graphs prepared for hls4ml: qonnx's channels-last and Gemm rewrites, pooling as
convolution, trailing transposes dropped (the executor transposes on the CPU), and the
project names hls4ml accepts.
"""
import contextlib
import re
import types

import numpy as np

from edgesdk.deps import require


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
    with qonnx_sessions(onnx):
        mw = cleanup_model(ModelWrapper(copy))
        mw = mw.transform(ConvertToChannelsLastAndClean(make_input_channels_last=True))
        mw = cleanup_model(mw.transform(GemmToMatMul()))
    drop_output_transposes(mw)
    return mw


@contextlib.contextmanager
def qonnx_sessions(onnx):
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


def drop_output_transposes(mw):
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
