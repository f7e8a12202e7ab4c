"""Fuzzing runtime inputs: EdgeModel.run / run_one with any shape, dtype, NaN/inf, empty
batches, lists and None give a result or an InputError. The model is loaded once."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle
from fuzz_strategies import check_error, fuzz_settings

# Casting 1e300 to float32 warns (then the inf is reported as an InputError).
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(scope="module")
def model(bundle_master):
    return load_bundle(bundle_master, threads=1)


DTYPES = st.sampled_from([np.float32, np.float16, np.float64, np.longdouble, np.int8, np.uint8,
                          np.int64, np.bool_, np.complex64, np.object_, np.str_, np.bytes_])
SHAPES = (st.sampled_from([(0, 1, 28, 28), (1, 1, 28, 28), (3, 1, 28, 28), (2, 1, 28, 27),
                           (1, 28, 28), (28, 28), (), (0,), (1, 1, 28, 28, 1), (1, 3, 28, 28)])
          | hnp.array_shapes(min_dims=0, max_dims=5, max_side=4))


@st.composite
def arrays(draw):
    dtype, shape = draw(DTYPES), draw(SHAPES)
    if dtype in (np.object_, np.str_, np.bytes_):
        return np.full(shape, draw(st.sampled_from([None, "x", b"y", 1.0])), dtype=dtype)
    elements = st.floats(width=16) if dtype is np.float16 else None
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    if x.dtype.kind == "f" and x.size and draw(st.booleans()):
        x.flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(
            [np.nan, np.inf, -np.inf, 1e300, -1e300]))
    return x


ODD_INPUTS = st.sampled_from([None, 1.5, "x", b"x", [], [[]], {}, object(), [[1, 2], [3]],
                              [[[[0.0] * 28] * 28]], [[[[0.0] * 28] * 27]]])


def check_run(model, x, one=False):
    try:
        out = model.run_one(x) if one else model.run(x)
    except InputError as exc:
        check_error(exc)
        return None
    if one:
        assert 0 <= out.label < model.num_classes and 0 <= out.exit_index < model.num_exits
        return out
    assert len(out) == np.shape(x)[0] and out.probabilities.shape == (len(out), model.num_classes)
    assert np.isfinite(out.probabilities).all()
    return out


@fuzz_settings(200)
@given(x=arrays() | ODD_INPUTS)
def test_run_any_array(model, x):
    out = check_run(model, x)
    if isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.shape[1:] == (1, 28, 28) \
            and np.isfinite(x.astype(np.float32)).all():
        # Valid input is accepted, any float width, empty batches too; inputs so large that
        # the network overflows float32 inside are refused by name, never answered with NaN.
        assert out is not None or np.abs(x.astype(np.float64)).max() > 1e4


@fuzz_settings(100)
@given(x=arrays() | ODD_INPUTS)
def test_run_one_any_array(model, x):
    check_run(model, x, one=True)


@fuzz_settings(60)
@given(t=st.lists(st.none() | st.floats() | st.integers() | st.sampled_from(
    [10 ** 400, "0.5", "x", [], True]), max_size=4) | st.none())
def test_any_thresholds(model, t):
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    try:
        model.run(x, thresholds=t)
    except InputError as exc:
        check_error(exc, "threshold")


# Regressions: minimal inputs found by fuzzing.
def test_run_one_ragged_list_is_an_input_error(model):
    with pytest.raises(InputError, match="could not be converted"):
        model.run_one([[1, 2], [3]])  # was ValueError (inhomogeneous shape) from numpy


def test_huge_integer_threshold_is_an_input_error(model):
    with pytest.raises(InputError, match="threshold of exit 0"):  # was OverflowError
        model.run(np.zeros((1, 1, 28, 28), np.float32), thresholds=[10 ** 400, None, None])
