"""Count multiply-accumulates of an ONNX graph (the cost model until profiles replace it).

Shapes are taken at the concrete example batch, every dimension known: ONNX shape inference
(with data propagation) first, which runs nothing; where it leaves an operand's shape unknown
(the ``Shape -> Gather -> Concat -> Reshape`` chains the TorchScript exporter writes for
einops-style code with a dynamic batch), the graph is run once in ONNX Runtime on the example
with those tensors added as outputs. The run is exact, since it is what the runtime computes,
and covers every op the bundle can run at all. ``onnxruntime.tools.symbolic_shape_infer`` was
not used: it is a tool script rather than an API, and it raises on ops it does not model.

A node whose cost cannot be counted is reported, never counted as 0 silently.
"""
import collections

import numpy as np

from edgesdk.deps import require
from edgesdk.errors import InputError

# Element-wise, pooling, normalisation and data-movement ops are not counted: next to the
# matrix ops they are small on CPUs and GPUs, and measured profiles replace this estimate.
MacCount = collections.namedtuple("MacCount", ["total", "uncounted"])
MacCount.__doc__ = """MACs per sample (``total``) and the nodes left out of it (``uncounted``:
``[{"node": name, "op": op_type, "why": reason}]``; empty when the count is complete)."""

# Standard ops doing matrix work that this counter does not model.
_UNMODELLED = {"LSTM", "GRU", "RNN", "DeformConv", "Attention"}
# ONNX Runtime contrib ops (com.microsoft) that are element-wise or normalisation: small.
_CHEAP_CONTRIB = {
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearReduceMean",
    "QLinearWhere", "QuantizeLinear", "DequantizeLinear", "Gelu", "FastGelu", "BiasGelu",
    "QuickGelu", "BiasAdd", "BiasSplitGelu", "SkipLayerNormalization", "LayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "NhwcMaxPool",
}
_STANDARD_DOMAINS = ("", "ai.onnx")
# Where each counted op reads its operands: (A, B) of the product.
_OPERANDS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3),
             "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1),
             "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


def _known_dims(value_info):
    """The shape of ``value_info`` if every dimension is a known positive integer, else None."""
    t = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
    return dims if all(d > 0 for d in dims) else None


def _example_shapes(model, example):
    """``{input name: concrete shape}`` and the batch, from ``example`` (name -> array or
    shape); without one, symbolic dimensions are 1 (one sample)."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    shapes = {}
    for inp in inputs:
        graph_dims = [d.dim_value if d.HasField("dim_value") else None
                      for d in inp.type.tensor_type.shape.dim]
        if example is None:
            shapes[inp.name] = [1 if d is None else d for d in graph_dims]
            continue
        if inp.name not in example:
            raise InputError("count_macs: the example has no input '{}' (it has {}); give "
                             "every graph input".format(inp.name, sorted(example)))
        given = example[inp.name]
        shape = [int(d) for d in (given.shape if hasattr(given, "shape") else given)]
        if len(shape) != len(graph_dims) or any(
                g is not None and g != d for g, d in zip(graph_dims, shape)):
            raise InputError("count_macs: example input '{}' has shape {}, the graph takes {} "
                             "(None: any)".format(inp.name, shape, graph_dims))
        shapes[inp.name] = shape
    batch = 1
    if example is not None and inputs and shapes[inputs[0].name]:
        batch = shapes[inputs[0].name][0]
    return shapes, batch


def _infer(model, input_shapes):
    """A copy of ``model`` with concrete input shapes and every shape ONNX can infer, and
    ``{tensor: shape}`` of the tensors whose shape is fully known."""
    onnx = require("onnx", "onnx", "count MACs")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        if inp.name in input_shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, input_shapes[inp.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # inference is an optimisation here: the ONNX Runtime run still answers
        pass
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = _known_dims(v)
        if dims is not None:
            shapes[v.name] = dims
    shapes.update({t.name: list(t.dims) for t in m.graph.initializer})
    return m, shapes


def _run_for_shapes(model, names, input_shapes, example):
    """Shapes of the tensors ``names`` from one ONNX Runtime run on the example (zeros of
    the example's shape where only shapes were given). Returns ``({name: shape}, error)``."""
    try:
        onnx = require("onnx", "onnx", "count MACs")
        require("onnxruntime", "onnx", "read the shapes shape inference cannot")
        from edgesdk.runtime.executors.ort import make_session
    except Exception as exc:  # the caller reports the nodes as uncounted with this reason
        return {}, str(exc)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    # A graph output needs no type: ONNX Runtime takes the producer's.
    m.graph.output.extend([onnx.ValueInfoProto(name=n) for n in names])
    feeds = {}
    for inp in m.graph.input:
        if inp.name not in input_shapes:
            continue
        given = example.get(inp.name) if example is not None else None
        if isinstance(given, np.ndarray):
            feeds[inp.name] = given
        else:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
            feeds[inp.name] = np.zeros(input_shapes[inp.name], dtype=dtype)
    try:
        # Unoptimised: the tensors asked for must exist as they are in the graph.
        session = make_session(m.SerializeToString(), optimize=False)
        values = session.run(list(names), feeds)
    except Exception as exc:
        return {}, "{}: {}".format(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return {n: list(np.shape(v)) for n, v in zip(names, values)}, None


def _prod(dims):
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _attr(node, name, default=0):
    for a in node.attribute:
        if a.name == name:
            return a.s.decode() if a.type == a.STRING else a.i
    return default


def _conv_macs(node, x, w, y):
    """Conv: every output element sums (Cin/groups) x kernel products; w is
    (Cout, Cin/groups, k...). ConvTranspose: every input element scatters into
    (Cout/groups) x kernel outputs; w is (Cin, Cout/groups, k...)."""
    if node.op_type == "ConvTranspose":
        return _prod(x) * w[1] * _prod(w[2:])
    return _prod(y) * w[1] * _prod(w[2:])


def _gemm_macs(node, a, b):
    """Gemm: Y(M, N) = op(A)(M, K) @ op(B)(K, N); the C bias adds are not MACs."""
    m, k = (a[1], a[0]) if _attr(node, "transA") else (a[0], a[1])
    n = b[0] if _attr(node, "transB") else b[1]
    return m * n * k


def _matmul_macs(node, a, b):
    """numpy matmul: 1-D operands are promoted (and the added dim dropped), the leading
    dims broadcast; MACs = batch x M x N x K."""
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    if a[-1] != b[-2]:
        raise ValueError("inner dimensions {} and {} differ".format(a, b))
    batch = _broadcast([a[:-2], b[:-2]])
    return _prod(batch) * a[-2] * b[-1] * a[-1]


def _broadcast(shapes):
    """numpy broadcasting of ``shapes`` (lists of ints)."""
    rank = max(len(s) for s in shapes) if shapes else 0
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(dims) > 1:
            raise ValueError("shapes {} do not broadcast".format(shapes))
        out.append(dims.pop() if dims else 1)
    return out


def einsum_macs(equation, shapes):
    """MACs of ``Einsum(equation)`` on operands of ``shapes``.

    Two operands: the product of every distinct index size (each term of the sum is one
    multiply-accumulate). More operands are contracted pairwise left to right, as ONNX
    Runtime does, an index summed out as soon as no later operand nor the output uses it.
    One operand (transpose, trace, sum) multiplies nothing: 0.
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError("equation '{}' has {} operands, the node {}".format(
            equation, len(terms), len(shapes)))
    ell_rank = max([len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes)
                    if "..." in t] or [0])
    ell = ["." + str(i) for i in range(ell_rank)]  # labels no letter can clash with
    sizes, labelled = {}, []
    for term, shape in zip(terms, shapes):
        head, dots, tail = term.partition("...")
        n = len(shape) - len(head) - len(tail)
        labels = list(head) + (ell[ell_rank - n:] if dots else []) + list(tail)
        if len(labels) != len(shape):
            raise ValueError("operand '{}' does not fit shape {}".format(term, shape))
        for label, d in zip(labels, shape):
            if d != 1 or label not in sizes:
                if sizes.get(label, 1) not in (1, d):
                    raise ValueError("index '{}' is {} and {}".format(label, sizes[label], d))
                sizes[label] = d
        labelled.append(labels)
    if arrow:
        out = set(rhs.replace("...", "")) | (set(ell) if "..." in rhs else set())
    else:  # implicit output: the ellipsis and every letter used once
        letters = [c for t in labelled for c in t if not c.startswith(".")]
        out = set(ell) | {c for c in letters if letters.count(c) == 1}
    if len(labelled) < 2:
        return 0
    total, running = 0, set(labelled[0])
    for i in range(1, len(labelled)):
        joint = running | set(labelled[i])
        total += _prod(sizes[c] for c in joint)
        later = set(c for t in labelled[i + 1:] for c in t) | out
        running = joint & later
    return total


def _node_name(node, i):
    return node.name or "{} node #{} (unnamed)".format(node.op_type, i)


def _subgraph_matrix_ops(node):
    """Matrix ops (counted kinds or unmodelled ones) inside ``node``'s subgraphs (If, Loop,
    Scan bodies): their cost depends on the branch taken or the trip count."""
    found = []
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                if n.op_type in _OPERANDS or n.op_type == "Einsum" or n.op_type in _UNMODELLED:
                    found.append(n.op_type)
                found.extend(_subgraph_matrix_ops(n))
    return found


def _operand_names(node):
    """The tensors whose shapes the node's count needs (a convolution's output too: its
    spatial size depends on pads, strides and dilations)."""
    if node.op_type == "Einsum":
        return list(node.input)
    if node.op_type in _OPERANDS:
        ia, ib = _OPERANDS[node.op_type]
        names = [node.input[ia], node.input[ib]]
        return names + [node.output[0]] if "Conv" in node.op_type else names
    return []


def count_macs(model, example=None):
    """MACs per sample through the ONNX ``model``, and the nodes that could not be counted.

    ``example``: ``{input name: array or shape}`` at a concrete batch (the first dimension);
    shapes are taken there and the total divided by that batch. Without it, every symbolic
    dimension is 1 and nothing is divided (the count is per call). Counted: Conv,
    ConvTranspose, Gemm, MatMul (batched, broadcasting), Einsum, and their INT8 forms
    (ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul).
    Reported in ``uncounted``: ops doing matrix work that are not modelled (LSTM, GRU, RNN,
    attention contrib ops, ops of unknown domains, matrix ops inside If/Loop/Scan bodies) and
    counted ops whose shapes stay unknown. Returns a :data:`MacCount`.
    """
    input_shapes, batch = _example_shapes(model, example)
    m, shapes = _infer(model, input_shapes)
    needed = [n for node in m.graph.node for n in _operand_names(node) if n and n not in shapes]
    run_error = None
    if needed:
        found, run_error = _run_for_shapes(m, sorted(set(needed)), input_shapes, example)
        shapes.update(found)
    total, uncounted = 0, []

    def skip(node, i, why):
        uncounted.append({"node": _node_name(node, i), "op": node.op_type, "why": why})

    for i, node in enumerate(m.graph.node):
        op = node.op_type
        inner = _subgraph_matrix_ops(node)
        if inner:
            skip(node, i, "its subgraph holds {} (cost depends on the branch or trip count)"
                 .format(", ".join(sorted(set(inner)))))
            continue
        if node.domain not in _STANDARD_DOMAINS:
            if op not in _CHEAP_CONTRIB:
                skip(node, i, "op of domain '{}' whose cost is not modelled".format(node.domain))
            continue
        if op in _UNMODELLED:
            skip(node, i, "does matrix work this counter does not model")
            continue
        names = _operand_names(node)
        if not names:
            continue
        missing = [n for n in names if n and n not in shapes]
        if missing:
            skip(node, i, "shape of '{}' unknown: shape inference left it symbolic and the "
                 "ONNX Runtime run failed ({})".format(missing[0], run_error or "not run"))
            continue
        operands = [shapes[n] for n in names]
        try:
            total += _node_macs(node, operands)
        except (ValueError, IndexError, KeyError) as exc:
            skip(node, i, "operand shapes {} not understood: {}".format(operands, exc))
    return MacCount(int(round(total / float(batch))), uncounted)


def _node_macs(node, operands):
    """MACs of one counted node, given its operands' shapes (see :func:`_operand_names`)."""
    if node.op_type == "Einsum":
        return einsum_macs(_attr(node, "equation", ""), operands)
    if node.op_type == "Gemm":
        return _gemm_macs(node, operands[0], operands[1])
    if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        return _matmul_macs(node, operands[0], operands[1])
    return _conv_macs(node, *operands)
