"""Activation memory of an ONNX graph per sample, from the graph's own bytes.

The converter records ``memory.activation_bytes_per_sample`` in the manifest; a manifest is
only a claim, so the runtime recomputes the figure from each verified ONNX graph it loads
and checks batches against the larger of the two (:mod:`.memory`). Weights are not counted
(the graph files are). Shapes come from ONNX shape inference where the ``onnx`` package is
installed (the host); without it (boards) from the shapes the graph
declares (its inputs, outputs and ``value_info``), read from the protobuf by
:mod:`edgesdk.onnx_scan`. Tensors of unknown shape count as the largest known one. The
inference is ONNX's C++ one on the graph's bytes, with data propagation, the batch dimension
left symbolic (counted as 1): its result is read by the same protobuf walk.

Inference runs on a skeleton of a graph above 1 MiB, its large weights left out (their shapes
kept), so it costs milliseconds even for graphs of hundreds of megabytes. Python 3.6
compatible; the ``onnx`` package itself is never imported (see :func:`_shape_inference`).
"""
import os
import sys

from edgesdk.onnx_scan import graph_outline, skeleton

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


_INFERENCE = []   # ONNX's C++ shape inference, once loaded (or None where it is not)


def _shape_inference():
    """``infer_shapes(model bytes, check_type, strict_mode, data_prop) -> bytes`` from the onnx
    package's C++ extension, loaded without the package itself: importing ``onnx`` takes
    0.6 s (most of it its ml_dtypes dependency), the extension 4 ms. None where onnx is not
    installed (boards)."""
    if not _INFERENCE:
        infer = None
        try:
            import glob
            import importlib.machinery
            import importlib.util
            spec = importlib.util.find_spec("onnx")
            found = glob.glob(os.path.join(os.path.dirname(spec.origin), "onnx_cpp2py_export*")) \
                if spec is not None and spec.origin else []
            if found:
                name = "onnx.onnx_cpp2py_export"
                module = sys.modules.get(name)
                if module is None:
                    loader = importlib.machinery.ExtensionFileLoader(name, found[0])
                    module = importlib.util.module_from_spec(
                        importlib.util.spec_from_file_location(name, found[0], loader=loader))
                    loader.exec_module(module)
                infer = module.shape_inference.infer_shapes
        except Exception:  # noqa: BLE001 - another onnx layout: use the declared shapes
            infer = None
        _INFERENCE.append(infer)
    return _INFERENCE[0]


def graph_activation_bytes(data, name="graph"):
    """Peak activation bytes per sample of the serialized ONNX graph ``data``
    (:class:`~edgesdk.errors.IntegrityError` where it is not readable ONNX)."""
    infer = _shape_inference()
    inferred = None
    if infer is not None:
        try:
            inferred = infer(skeleton(data, name) if len(data) > SKELETON_ABOVE else bytes(data),
                             False, False, True)
        except Exception:  # noqa: BLE001 - ONNX cannot infer this graph: its declared shapes
            inferred = None
    outline = graph_outline(inferred if inferred is not None else data, name)
    sizes = {}
    for tensor in set(outline.inputs) | set(outline.outputs) | \
            set(n for _, outs in outline.nodes for n in outs):
        elem, dims = outline.types.get(tensor, (None, None))
        if dims and dims[0] is None:
            dims = [1] + list(dims[1:])   # the batch dimension (edgesdk's graphs are batch-major)
        sizes[tensor] = tensor_bytes(elem, dims)
    return peak_bytes(outline.inputs, outline.nodes, outline.outputs, sizes)
