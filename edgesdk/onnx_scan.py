"""Which files an ONNX graph would make ONNX Runtime read: the external-data locations of its
tensors, found by walking the protobuf wire format (no ``onnx`` package: this runs on the
device, Python 3.6).

Walked: the main graph's initializers and sparse initializers, every node attribute's
tensors and subgraphs (If, Loop, Scan), and local functions' nodes. A tensor whose
``data_location`` is EXTERNAL or that has ``external_data`` entries counts, with its
``location`` (None where it names none).
"""
from edgesdk.errors import IntegrityError

MAX_DEPTH = 32   # nested subgraphs

# field numbers (onnx.proto3)
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(buf, i):
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _spans(buf):
    """``(field number, wire type, value, start, end)`` of each field of one message: value
    is an int for varints, a memoryview for length-delimited fields, None for fixed-size
    ones; ``buf[start:end]`` is the field as encoded."""
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > n:
                raise ValueError("truncated field")
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > n:
                raise ValueError("truncated field")
            value = None
        else:
            raise ValueError("unsupported wire type {}".format(wire))
        yield field, wire, value, start, i


def _fields(buf):
    """``(field number, wire type, value)`` of each field of one message (see :func:`_spans`)."""
    for field, wire, value, _, _ in _spans(buf):
        yield field, wire, value


def _sub(buf, numbers):
    for field, wire, value in _fields(buf):
        if wire == 2 and field in numbers:
            yield field, value


def _tensor(buf, out):
    external, location = False, None
    for field, wire, value in _fields(buf):
        if field == _TENSOR_DATA_LOCATION and wire == 0 and value == 1:
            external = True
        elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            entry = dict((f, bytes(v).decode("utf-8", "replace"))
                         for f, v in _sub(value, (_ENTRY_KEY, _ENTRY_VALUE)))
            if entry.get(_ENTRY_KEY) == "location":
                location = entry.get(_ENTRY_VALUE)
    if external:
        out.append(location)


def _graph(buf, out, depth):
    if depth > MAX_DEPTH:
        raise ValueError("subgraphs nested deeper than {}".format(MAX_DEPTH))
    for field, value in _sub(buf, (_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE)):
        if field == _GRAPH_INITIALIZER:
            _tensor(value, out)
        elif field == _GRAPH_SPARSE:
            for _, t in _sub(value, (_SPARSE_VALUES, _SPARSE_INDICES)):
                _tensor(t, out)
        else:
            _node(value, out, depth)


def _node(buf, out, depth):
    for _, attr in _sub(buf, (_NODE_ATTRIBUTE,)):
        for field, value in _sub(attr, (_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS,
                                        _ATTR_SPARSE, _ATTR_SPARSES)):
            if field in (_ATTR_T, _ATTR_TENSORS):
                _tensor(value, out)
            elif field in (_ATTR_G, _ATTR_GRAPHS):
                _graph(value, out, depth + 1)
            else:
                for _, t in _sub(value, (_SPARSE_VALUES, _SPARSE_INDICES)):
                    _tensor(t, out)


def external_data_locations(model, name="graph"):
    """The ``location`` of every tensor of the serialized ONNX ``model`` (bytes) kept in an
    external file (None for one that names no location); [] for a self-contained graph.
    :class:`IntegrityError` where the bytes are not a readable ONNX model."""
    buf = memoryview(model)
    out = []
    try:
        for field, value in _sub(buf, (_MODEL_GRAPH, _MODEL_FUNCTIONS)):
            if field == _MODEL_GRAPH:
                _graph(value, out, 0)
            else:
                for _, node in _sub(value, (_FUNCTION_NODE,)):
                    _node(node, out, 0)
    except (ValueError, IndexError) as exc:
        raise IntegrityError("{} is not a readable ONNX model ({})".format(name, exc))
    return out


# GraphProto / NodeProto / ValueInfoProto / TypeProto / TensorProto fields read by the outline
_GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 11, 12, 13
_NODE_INPUT, _NODE_OUTPUT = 1, 2
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR, _TENSOR_TYPE_ELEM, _TENSOR_TYPE_SHAPE, _SHAPE_DIM, _DIM_VALUE = 1, 1, 2, 1, 1
_TENSOR_NAME = 8
# TensorProto fields holding values (float_data ... uint64_data, raw_data)
_TENSOR_VALUES = {4, 5, 6, 7, 9, 10, 11}
SKELETON_KEEP_BYTES = 4096   # weights up to this size keep their values (shape tensors)


class Outline(object):
    """The main graph of an ONNX model as names: ``inputs`` (not weights), ``outputs``,
    ``nodes`` (``[(input names, output names)]`` in order) and ``types`` (tensor name ->
    ``(elem_type, dims)``, a dim None where it is symbolic or missing) as the graph
    declares them."""

    def __init__(self, inputs, outputs, nodes, types):
        self.inputs, self.outputs, self.nodes, self.types = inputs, outputs, nodes, types


def _text(value):
    return bytes(value).decode("utf-8", "replace")


def _value_info(buf):
    name, elem, dims = None, None, None
    for field, wire, value in _fields(buf):
        if field == _VALUE_NAME and wire == 2:
            name = _text(value)
        elif field == _VALUE_TYPE and wire == 2:
            for _, tensor in _sub(value, (_TYPE_TENSOR,)):
                for f, w, v in _fields(tensor):
                    if f == _TENSOR_TYPE_ELEM and w == 0:
                        elem = v
                    elif f == _TENSOR_TYPE_SHAPE and w == 2:
                        dims = []
                        for _, dim in _sub(v, (_SHAPE_DIM,)):
                            known = [dv for df, dw, dv in _fields(dim)
                                     if df == _DIM_VALUE and dw == 0]
                            dims.append(known[0] if known else None)
    return name, elem, dims


def graph_outline(model, name="graph"):
    """The :class:`Outline` of the serialized ONNX ``model`` (bytes);
    :class:`IntegrityError` where the bytes are not a readable ONNX model."""
    inputs, outputs, nodes, types, weights = [], [], [], {}, set()
    try:
        for _, graph in _sub(memoryview(model), (_MODEL_GRAPH,)):
            for field, value in _sub(graph, (_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT,
                                             _GRAPH_OUTPUT, _GRAPH_VALUE_INFO)):
                if field == _GRAPH_NODE:
                    ins, outs = [], []
                    for f, v in _sub(value, (_NODE_INPUT, _NODE_OUTPUT)):
                        (ins if f == _NODE_INPUT else outs).append(_text(v))
                    nodes.append((ins, outs))
                elif field == _GRAPH_INITIALIZER:
                    weights.update(_text(v) for _, v in _sub(value, (_TENSOR_NAME,)))
                else:
                    tensor, elem, dims = _value_info(value)
                    types[tensor] = (elem, dims)
                    if field == _GRAPH_INPUT:
                        inputs.append(tensor)
                    elif field == _GRAPH_OUTPUT:
                        outputs.append(tensor)
    except (ValueError, IndexError) as exc:
        raise IntegrityError("{} is not a readable ONNX model ({})".format(name, exc))
    return Outline([i for i in inputs if i not in weights], outputs, nodes, types)


def _varint_bytes(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _delimited(field, payload):
    return _varint_bytes(field << 3 | 2) + _varint_bytes(len(payload)) + bytes(payload)


def skeleton(model, name="graph"):
    """``model`` (serialized ONNX) with the values of main-graph weights larger than
    ``SKELETON_KEEP_BYTES`` left out, names, types and dims kept: what shape inference needs
    (small shape tensors keep their values), without parsing hundreds of megabytes."""
    buf = memoryview(model)
    out = bytearray()
    try:
        for field, wire, value, start, end in _spans(buf):
            if field != _MODEL_GRAPH or wire != 2:
                out += buf[start:end]
                continue
            graph = bytearray()
            for f, w, v, s, e in _spans(value):
                if f == _GRAPH_INITIALIZER and w == 2 and len(v) > SKELETON_KEEP_BYTES:
                    graph += _delimited(f, b"".join(
                        v[ts:te] for tf, _, _, ts, te in _spans(v) if tf not in _TENSOR_VALUES))
                else:
                    graph += value[s:e]
            out += _delimited(field, graph)
    except (ValueError, IndexError) as exc:
        raise IntegrityError("{} is not a readable ONNX model ({})".format(name, exc))
    return bytes(out)
