"""Hypothesis strategies shared by the fuzz tests: JSON values, odd values, and mutations of
a real document at random JSON paths."""
import copy

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from edgesdk.errors import EdgeSDKError

FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                  HealthCheck.too_slow])


def fuzz_settings(n):
    return settings(max_examples=n, **FUZZ)


def _deep(depth, leaf):
    for _ in range(depth):
        leaf = [leaf] if depth % 2 else {"k": leaf}
    return leaf


SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
           | st.floats(allow_nan=False, allow_infinity=False))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=16)
# What hand-written validators forget: huge and negative numbers, floats where ints go,
# unsafe and unicode paths, empty containers, deep nesting, non-finite numbers (json.loads
# reads 1e999 as inf).
ODD = st.sampled_from([
    10 ** 30, -10 ** 30, 10 ** 400, -(10 ** 400), -1, 0, 1, 2, 0.5, -0.0, 1e308,
    float("inf"), float("-inf"), float("nan"), True, False, None, "", " ", "..",
    "../x.onnx", "/etc/passwd", "stages/../../x.onnx", "C:/x.onnx", "stages\\x.onnx",
    "stages//x.onnx", "./x.onnx", "st\u00e4ges/\u00fcml\u00e4ut.onnx", "\u202egnp.onnx",
    "\x00", "\ud800", "a" * 300, [], {}, [None], [[]], [{}], [1, 2], {"": None},
    _deep(50, 1), _deep(80, None)])
VALUES = ODD | JSON


def paths(doc, prefix=(), depth=8):
    """Every JSON path in ``doc`` (tuples of keys and indices) up to ``depth`` levels."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(
        doc, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        if depth > 1:
            out.extend(paths(v, prefix + (k,), depth - 1))
    return out


@st.composite
def mutated(draw, doc, max_mutations=3):
    """A deep copy of ``doc`` with 1..max_mutations values replaced, keys deleted or added."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_mutations))):
        ps = paths(doc)
        if not ps:
            break
        path = draw(st.sampled_from(ps))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if kind == "replace":
            parent[path[-1]] = copy.deepcopy(draw(VALUES))  # ODD holds shared objects
        elif kind == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = copy.deepcopy(draw(VALUES))
        else:
            parent.append(copy.deepcopy(draw(VALUES)))
    return doc


def check_error(exc, where=None):
    """A user-facing error: an EdgeSDKError subclass with a message (naming ``where``)."""
    assert isinstance(exc, EdgeSDKError), repr(exc)
    assert str(exc).strip(), "empty message: {!r}".format(exc)
    if where is not None:
        assert where in str(exc), str(exc)
