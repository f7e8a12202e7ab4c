"""Check stage and head graphs against a TensorRT release's ONNX parser, and rewrite the
operators it lacks where a decomposition into operators it has exists.

Everything found in every graph is reported at once (:func:`check_graphs`); a problem that a
decomposition fixes says so, and :func:`decompose` applies them. The tables live in
:mod:`edgesdk.converters.tensorrt.ops`.
"""
from dataclasses import dataclass

import numpy as np

from edgesdk.deps import require
from edgesdk.errors import UnsupportedOpError


@dataclass(frozen=True)
class Problem:
    """Something in one graph that the TensorRT release's parser would refuse."""

    graph: str
    node: str
    op: str
    reason: str
    fix: str = None

    def line(self):
        text = "{}: node '{}' ({}): {}".format(self.graph, self.node, self.op, self.reason)
        return text + ("; fix: " + self.fix if self.fix else "")


def _onnx():
    return require("onnx", "onnx", "check graphs for TensorRT")


def _constant_names(graph):
    return {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}


def _attr(node, name, default=None):
    onnx = _onnx()
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _opset(model):
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def graph_problems(gid, model, ops, no_bool=False):
    """Every :class:`Problem` of the ONNX ``model`` (graph id ``gid``) for ``ops`` (a
    :class:`~edgesdk.converters.tensorrt.ops.TensorRTOps`); ``no_bool``: bool tensors are
    problems too (TensorRT refuses them in INT8 graphs)."""
    found = []
    opset = _opset(model)
    low, high = ops.opsets
    if not low <= opset <= high:
        found.append(Problem(gid, "(graph)", "opset {}".format(opset),
                             "TensorRT {} parses opsets {}..{}".format(ops.name, low, high),
                             "convert again with --opset {}".format(min(max(opset, low), high))))
    consts = _constant_names(model.graph)
    types = _elem_types(model)
    for node in model.graph.node:
        name = node.name or "(unnamed)"
        if node.domain not in ("", "ai.onnx"):
            found.append(Problem(gid, name, node.domain + "." + node.op_type,
                                 "custom-domain operators need a TensorRT plugin"))
            continue
        op = node.op_type
        if op not in ops.supported:
            fix = DECOMPOSITIONS[op].describe if _rewritable(node, ops, types) else None
            found.append(Problem(gid, name, op, "not in TensorRT {}'s ONNX operator table".format(
                ops.name), "--decompose rewrites it as " + fix if fix else None))
            continue
        for pos in ops.constant_inputs.get(op, ()):
            if len(node.input) > pos and node.input[pos] and node.input[pos] not in consts:
                found.append(Problem(gid, name, op, "input {} ('{}') must be a constant for "
                                     "TensorRT {}".format(pos, node.input[pos], ops.name),
                                     "export with constant folding (the default)"))
        if op == "Resize" and _attr(node, "mode", b"nearest").decode() not in ops.resize_modes:
            found.append(Problem(gid, name, op, "mode '{}' is not one of {}".format(
                _attr(node, "mode").decode(), ", ".join(ops.resize_modes)),
                "use nearest or bilinear interpolation"))
        if op in ("Conv", "ConvTranspose", "AveragePool", "MaxPool"):
            kernel = _attr(node, "kernel_shape")
            if kernel is not None and len(kernel) not in (2, 3):
                found.append(Problem(gid, name, op, "{}-D; TensorRT takes 2-D and 3-D only".format(
                    len(kernel)), "reshape to 2-D (N, C, 1, W) around the layer"))
        if op == "MaxPool" and len([o for o in node.output if o]) > 1:
            found.append(Problem(gid, name, op, "the Indices output is not supported"))
        if op in ("QuantizeLinear", "DequantizeLinear"):
            found += _qdq_problems(gid, name, node, model.graph, ops)
        if no_bool:
            found += [Problem(gid, name, op, "bool tensor '{}' in an INT8 graph".format(o),
                              "keep comparisons out of INT8 stages")
                      for o in node.output if types.get(o) == _onnx().TensorProto.BOOL]
    return found


def _qdq_problems(gid, name, node, graph, ops):
    """A Q/DQ node's zero point must be a constant 0 of a type the release quantizes to."""
    from onnx import numpy_helper
    init = {t.name: t for t in graph.initializer}
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "QuantizeLinear":  # no zero point: ONNX means uint8
            return [Problem(gid, name, node.op_type, "no zero point: the output is uint8",
                            "quantize with symmetric int8 activations")]
        return []
    zp = init.get(node.input[2])
    if zp is None:
        return [Problem(gid, name, node.op_type, "the zero point must be an initializer")]
    value = numpy_helper.to_array(zp)
    dtype = str(value.dtype)
    out = []
    if dtype not in ops.quantized:
        out.append(Problem(gid, name, node.op_type, "zero point type {}; TensorRT {} quantizes "
                           "to {}".format(dtype, ops.name, ", ".join(ops.quantized)),
                           "quantize with symmetric int8 activations"))
    elif np.any(value.astype(np.float32) != 0):
        out.append(Problem(gid, name, node.op_type, "non-zero zero point",
                           "quantize with symmetric int8 activations"))
    return out


def check_graphs(graphs, ops):
    """Raise :class:`UnsupportedOpError` listing every problem of every graph in ``graphs``
    (``{graph id: onnx.ModelProto}``) for ``ops``; returns None when all parse."""
    raise_problems([p for gid, m in graphs.items() for p in graph_problems(gid, m, ops)], ops)


def raise_problems(found, ops):
    """Raise :class:`UnsupportedOpError` listing ``found`` (:class:`Problem`), if any."""
    if found:
        fixable = sum(1 for p in found if p.fix and p.fix.startswith("--decompose"))
        raise UnsupportedOpError(
            "TensorRT {} would refuse {} node(s) ({}):\n{}{}".format(
                ops.name, len(found), ops.source, "\n".join("  " + p.line() for p in found),
                "\n{} of them are fixed by --decompose.".format(fixable) if fixable else ""))


# -- decompositions ---------------------------------------------------------------------------

class _Rule(object):
    """Rewrites one operator as a few others; ``needs`` the operators it emits;
    ``float_only``: exact only when the first input is float32."""

    def __init__(self, describe, needs, emit, float_only=False):
        self.describe = describe
        self.needs = frozenset(needs)
        self.emit = emit
        self.float_only = float_only


def _rewritable(node, ops, types):
    """Whether a rule rewrites ``node`` into operators ``ops`` has."""
    rule = DECOMPOSITIONS.get(node.op_type)
    return (rule is not None and node.domain in ("", "ai.onnx")
            and node.op_type not in ops.supported and rule.needs <= ops.supported
            and (not rule.float_only or types.get(node.input[0]) == _onnx().TensorProto.FLOAT))


def _const(graph, node, tag, value):
    from onnx import numpy_helper
    name = "{}__{}".format(node.output[0], tag)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
    return name


def _node(op, inputs, outputs, base):
    return _onnx().helper.make_node(op, inputs, outputs, name="{}/{}".format(base, outputs[0]))


def _reciprocal(graph, node):
    one = _const(graph, node, "one", 1.0)
    return [_node("Div", [one, node.input[0]], [node.output[0]], node.name)]


def _mod(graph, node):
    # ONNX Mod on floats is C's fmod (fmod=1): a - b * trunc(a / b), with
    # trunc(q) = sign(q) * floor(|q|).
    a, b, out = node.input[0], node.input[1], node.output[0]
    t = lambda s: "{}__{}".format(out, s)  # noqa: E731
    return [_node("Div", [a, b], [t("q")], node.name),
            _node("Abs", [t("q")], [t("absq")], node.name),
            _node("Floor", [t("absq")], [t("floor")], node.name),
            _node("Sign", [t("q")], [t("sign")], node.name),
            _node("Mul", [t("sign"), t("floor")], [t("whole")], node.name),
            _node("Mul", [b, t("whole")], [t("prod")], node.name),
            _node("Sub", [a, t("prod")], [out], node.name)]


def _isinf(graph, node):
    pos, neg = _attr(node, "detect_positive", 1), _attr(node, "detect_negative", 1)
    x, out = node.input[0], node.output[0]
    if pos and neg:
        inf = _const(graph, node, "inf", np.inf)
        return [_node("Abs", [x], [out + "__abs"], node.name),
                _node("Equal", [out + "__abs", inf], [out], node.name)]
    return [_node("Equal", [x, _const(graph, node, "inf", np.inf if pos else -np.inf)], [out],
                  node.name)]


def _shrink(graph, node):
    lambd, bias = _attr(node, "lambd", 0.5), _attr(node, "bias", 0.0)
    x, out = node.input[0], node.output[0]
    t = lambda s: "{}__{}".format(out, s)  # noqa: E731
    c = {k: _const(graph, node, k, v) for k, v in
         (("lambd", lambd), ("neg_lambd", -lambd), ("bias", bias), ("zero", 0.0))}
    return [_node("Less", [x, c["neg_lambd"]], [t("low")], node.name),
            _node("Greater", [x, c["lambd"]], [t("high")], node.name),
            _node("Add", [x, c["bias"]], [t("up")], node.name),
            _node("Sub", [x, c["bias"]], [t("down")], node.name),
            _node("Where", [t("high"), t("down"), c["zero"]], [t("hi_or_0")], node.name),
            _node("Where", [t("low"), t("up"), t("hi_or_0")], [out], node.name)]


DECOMPOSITIONS = {
    "Reciprocal": _Rule("Div(1, x)", ["Div"], _reciprocal),
    "Mod": _Rule("a - b * trunc(a / b)",
                 ["Div", "Floor", "Mul", "Sub", "Abs", "Sign"], _mod, float_only=True),
    "IsInf": _Rule("Equal(Abs(x), inf)", ["Abs", "Equal"], _isinf),
    "Shrink": _Rule("two Where over Less/Greater", ["Less", "Greater", "Add", "Sub", "Where"],
                    _shrink),
}


def decompose(model, ops):
    """A copy of ``model`` with every operator ``ops`` lacks and a rule rewrites replaced;
    returns ``(model, [(node name, op, rewrite)])``. Integer Mod is left alone (no exact
    rewrite with float division)."""
    onnx = _onnx()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = _elem_types(out)
    graph = out.graph
    done, nodes = [], []
    for node in graph.node:
        if _rewritable(node, ops, types):
            rule = DECOMPOSITIONS[node.op_type]
            nodes += rule.emit(graph, node)
            done.append((node.name or "(unnamed)", node.op_type, rule.describe))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out, done


def _elem_types(model):
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input)
             + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types
