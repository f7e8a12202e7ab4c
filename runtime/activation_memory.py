"""Activation memory of an ONNX graph per sample, from the graph's own bytes.

The converter records ``memory.activation_bytes_per_sample`` in the manifest; a manifest is
only a claim, so the runtime recomputes the figure from each verified ONNX graph it loads
and checks batches against the larger of the two (:mod:`.memory`). Weights are not counted
(the graph files are). Shapes come from ONNX shape inference at a batch of 1 where the
``onnx`` package is installed (the host); without it (boards) from the shapes the graph
declares (its inputs, outputs and ``value_info``), read from the protobuf by
:mod:`edgesdk.onnx_scan`. Tensors of unknown shape count as the largest known one.

Inference runs on a skeleton of a graph above 1 MiB, its large weights left out (their shapes
kept), so it costs milliseconds even for graphs of hundreds of megabytes. Python 3.6
compatible; ``onnx`` is imported only when a figure is asked for.
"""
from edgesdk.onnx_scan import Outline, graph_outline, skeleton

SKELETON_ABOVE = 1 << 20   # bytes: larger graphs are read without their large weights

# bytes per element of ONNX TensorProto data types (STRING counted as a pointer)
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 8, 9: 1, 10: 2, 11: 8, 12: 4,
                 13: 8, 14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1}


def tensor_bytes(elem_type, dims):
    """Bytes of a tensor of ``dims`` (None for an unknown dimension); None if unknown."""
    if elem_type not in ELEMENT_BYTES or dims is None or any(
            d is None or d <= 0 for d in dims):
        return None
    size = ELEMENT_BYTES[elem_type]
    for d in dims:
        size *= d
    return size


def peak_bytes(inputs, nodes, outputs, sizes):
    """Peak bytes alive at once when ``nodes`` (``[(input names, output names)]``, in the
    graph's topological order) run: a tensor lives from the node that makes it (``inputs``
    from the start) to its last reader (``outputs`` to the end). ``sizes``: tensor name ->
    bytes or None (unknown: counted as the largest known)."""
    known = [b for b in sizes.values() if b is not None]
    fallback = max(known) if known else 0

    def size(name):
        b = sizes.get(name)
        return fallback if b is None else b

    last_use = {}
    for i, (node_inputs, _) in enumerate(nodes):
        for name in node_inputs:
            last_use[name] = i
    for name in outputs:
        last_use[name] = len(nodes)
    live = dict((name, size(name)) for name in inputs)
    peak = sum(live.values())
    for i, (_, node_outputs) in enumerate(nodes):
        for name in node_outputs:
            if name:
                live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= i]:
            del live[name]
    return int(peak)


def _with_onnx(data, onnx):
    """``(outline, types)`` from ONNX shape inference at batch 1 (types: tensor -> (elem_type,
    dims)); None where onnx cannot read the graph. Large graphs are read as a skeleton."""
    try:
        m = onnx.load_from_string(skeleton(data) if len(data) > SKELETON_ABOVE else data)
        for inp in m.graph.input:
            dims = inp.type.tensor_type.shape.dim
            if dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = 1
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - an unreadable graph falls back to declared shapes
        return None
    weights = {t.name for t in m.graph.initializer}
    outline = Outline([i.name for i in m.graph.input if i.name not in weights],
                      [o.name for o in m.graph.output],
                      [(list(n.input), list(n.output)) for n in m.graph.node], {})
    types = {}
    for v in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = v.type.tensor_type
        if v.type.HasField("tensor_type") and t.HasField("shape"):
            types[v.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") else None
                                           for d in t.shape.dim])
    return outline, types


def graph_activation_bytes(data, name="graph"):
    """Peak activation bytes per sample of the serialized ONNX graph ``data``
    (:class:`~edgesdk.errors.IntegrityError` where it is not readable ONNX)."""
    try:
        import onnx
    except ImportError:
        onnx = None
    found = _with_onnx(data, onnx) if onnx is not None else None
    if found is None:   # no onnx here (boards): the shapes the graph declares
        outline = graph_outline(data, name)
        found = outline, outline.types
    outline, types = found
    sizes = {}
    for tensor in set(outline.inputs) | set(outline.outputs) | \
            set(n for _, outs in outline.nodes for n in outs):
        elem, dims = types.get(tensor, (None, None))
        if dims and dims[0] is None:
            dims = [1] + list(dims[1:])   # the batch dimension (edgesdk's graphs are batch-major)
        sizes[tensor] = tensor_bytes(elem, dims)
    return peak_bytes(outline.inputs, outline.nodes, outline.outputs, sizes)
