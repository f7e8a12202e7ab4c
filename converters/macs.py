"""Count multiply-accumulates of an ONNX graph (the cost model until profiles replace it)."""
from edgesdk.deps import require


def _dims(value_info):
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def infer_at_batch_1(model, why):
    """A copy of ``model`` with a batch of 1 and shapes inferred, and ``{tensor: value_info}``
    of every activation (inputs, intermediates, outputs) whose shape is known."""
    onnx = require("onnx", "onnx", why)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    m = onnx.shape_inference.infer_shapes(m)
    return m, {v.name: v for v in list(m.graph.value_info) + list(m.graph.input)
               + list(m.graph.output)}


def count_macs(model):
    """MACs for one sample through ``model`` (Conv, ConvTranspose, Gemm, MatMul).

    Element-wise ops, pooling and normalisation are not counted: on CPUs and GPUs they are
    small next to the convolutions, and measured profiles replace this estimate anyway.
    """
    m, infos = infer_at_batch_1(model, "count MACs")
    shapes = {name: _dims(v) for name, v in infos.items()}
    shapes.update({t.name: list(t.dims) for t in m.graph.initializer})
    total = 0
    for node in m.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            y = shapes.get(node.output[0])
            if not w or not y:
                continue
            spatial_out = 1
            for d in y[2:]:
                spatial_out *= d
            kernel = 1
            for d in w[2:]:
                kernel *= d
            if node.op_type == "Conv":  # w: (Cout, Cin/groups, k...)
                total += y[1] * spatial_out * w[1] * kernel
            else:                         # w: (Cin, Cout/groups, k...); one MAC per input pixel
                x = shapes.get(node.input[0])
                spatial_in = 1
                for d in (x or [])[2:]:
                    spatial_in *= d
                total += w[0] * w[1] * kernel * spatial_in
        elif node.op_type in ("Gemm", "MatMul"):
            a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a or not y:
                continue
            k = a[-1] if not (node.op_type == "Gemm" and _trans_a(node)) else a[0]
            out = 1
            for d in y:
                out *= d
            total += out * k
    return int(total)


def _trans_a(node):
    return any(a.name == "transA" and a.i for a in node.attribute)
