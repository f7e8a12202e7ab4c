"""How much memory a bundle's graphs need per sample: the figure the runtime checks a batch
against before running it (``manifest.memory``)."""
from edgesdk.converters.macs import infer_at_batch_1
from edgesdk.deps import require


def _bytes(value_info, helper):
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
    if not t.HasField("shape") or any(d <= 0 for d in dims):
        return None
    size = helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    for d in dims:
        size *= d
    return size


def activation_bytes(model):
    """Peak bytes of activations alive at once for one sample through the ONNX ``model``.

    Nodes run in the graph's (topological) order; a tensor lives from the node that makes it
    (the graph's inputs from the start) to its last reader (outputs to the end). Weights are
    not counted (the runtime counts the graph files). Tensors whose shape cannot be inferred
    count as the largest known one, so the figure errs high.
    """
    onnx = require("onnx", "onnx", "estimate activation memory")
    m, infos = infer_at_batch_1(model, "estimate activation memory")
    weights = {t.name for t in m.graph.initializer}
    known = [b for b in (_bytes(v, onnx.helper) for v in infos.values()) if b is not None]
    fallback = max(known) if known else 0

    def size(name):
        b = _bytes(infos[name], onnx.helper) if name in infos else None
        return fallback if b is None else b

    last_use = {}
    for i, node in enumerate(m.graph.node):
        for name in node.input:
            last_use[name] = i
    end = len(m.graph.node)
    for out in m.graph.output:
        last_use[out.name] = end
    live = {i.name: size(i.name) for i in m.graph.input if i.name not in weights}
    peak = sum(live.values())
    for i, node in enumerate(m.graph.node):
        for name in node.output:
            if name:
                live[name] = size(name)
        peak = max(peak, sum(live.values()))
        for name in [n for n in live if last_use.get(n, -1) <= i]:
            del live[name]
    return int(peak)
