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


def _fields(buf):
    """``(field number, wire type, value)`` of one message: value is an int for varints, a
    memoryview for length-delimited fields, None for fixed-size ones."""
    i, n = 0, len(buf)
    while i < n:
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
            value = None
        else:
            raise ValueError("unsupported wire type {}".format(wire))
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
