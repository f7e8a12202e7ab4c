"""FPGA pieces that need no HLS compile: board descriptors, fixed-point types from data, the
average-pooling rewrite, layouts of the C-simulation executor, estimates and budgets."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from edgesdk.converters.hls4ml.estimate import over_budget
from edgesdk.converters.hls4ml.fixed_point import fixed_type, grid_type, type_range
from edgesdk.converters.hls4ml.graph import pooling_as_conv
from edgesdk.runtime.executors.fpga_csim import from_hls_layout, hls_layout
from edgesdk.runtime.executors.ort import make_session
from edgesdk.targets import get_target


def test_fpga_boards_carry_their_part_clock_budget_and_backend():
    u96, zcu, pynq = (get_target(n) for n in ("ultra96-v2", "zcu104", "pynq-z2"))
    assert (u96.fabric.part, u96.fabric.dsp, u96.fabric.bram_18k, u96.fabric.lut) == \
        ("xczu3eg-sbva484-1-e", 360, 432, 70560)
    assert (zcu.fabric.part, zcu.fabric.dsp) == ("xczu7ev-ffvc1156-2-e", 1728)
    assert (pynq.fabric.part, pynq.fabric.dsp, pynq.arch) == ("xc7z020clg400-1", 220, "armv7l")
    assert all(t.fabric.hls_backend == "Vitis" and "hls4ml" in t.toolchains
               for t in (u96, zcu, pynq))
    assert u96.describe()["fabric"]["clock_mhz"] == 200.0
    assert get_target("host").fabric is None


@pytest.mark.parametrize("low,high,width,expected", [
    (0.0, 5.68, 8, "ufixed<8,3,RND_CONV,SAT>"),     # [0, 8)
    (-3.2, 2.0, 16, "fixed<16,3,RND_CONV,SAT>"),    # [-4, 4)
    (0.0, 4.0, 8, "ufixed<8,3,RND_CONV,SAT>"),      # 4 itself needs 3 integer bits
    (-0.3, 0.2, 12, "fixed<12,0,RND_CONV,SAT>"),    # [-0.5, 0.5)
])
def test_types_from_data_hold_the_range_with_the_fewest_integer_bits(low, high, width, expected):
    assert fixed_type(low, high, width) == expected
    lo, hi = type_range(expected)
    assert lo <= low and high <= hi + 2.0 ** (int(expected.split(",")[1]) - width)


def test_values_on_a_quantizer_grid_get_their_exact_type():
    x = np.array([0.0, 0.03125, 5.6875, 1.5])         # multiples of 2^-5, below 8
    assert grid_type(x, 16) == "ufixed<8,3>"
    assert grid_type(-x, 16) == "fixed<9,4>"
    assert grid_type(np.array([0.1, 0.2]), 16) is None  # not on a power-of-two grid
    assert type_range("ufixed<8,3>") == (0.0, 8.0 - 2.0 ** -5)


def test_average_pooling_becomes_an_exact_conv():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
        opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    rewritten = pooling_as_conv(model)
    assert [n.op_type for n in rewritten.graph.node] == ["Conv", "Conv"]
    feed = {"x": np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)}
    a = make_session(model.SerializeToString()).run(None, feed)[0]
    b = make_session(rewritten.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_csim_layouts_round_trip_nchw_states():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    flat = hls_layout(x, "NHWC")
    assert flat.shape == (2, 60) and flat[0, 1] == x[0, 1, 0, 0]  # channels vary fastest
    np.testing.assert_array_equal(from_hls_layout(flat, "NHWC", [4, 5, 3], [None, 3, 4, 5]), x)
    logits = np.ones((2, 10), np.float32)
    assert from_hls_layout(hls_layout(logits, "flat"), "flat", [10], [None, 10]).shape == (2, 10)


def test_over_budget_names_the_resource_and_the_knob():
    fabric = get_target("pynq-z2").fabric
    msgs = over_budget({"dsp": 660, "lut": 1000, "bram_18k": 300, "ff": 10}, fabric, 2, "stage1")
    assert msgs == [
        "stage1 needs 300 BRAM18K of 280 on xc7z020clg400-1 (estimated): use fewer bits "
        "(width) or smaller feature maps",
        "stage1 needs 660 DSP of 220 on xc7z020clg400-1 (estimated): raise the reuse factor "
        "to 6 or more"]
    assert over_budget({"dsp": 220, "lut": 0, "bram_18k": 0, "ff": 0}, fabric, 1, "s") == []


def test_per_channel_weight_scales_get_exact_types_not_hls4mls_default(tmp_path):
    """8-bit per-channel weights have scales like 2^-13; hls4ml's ApplyAlpha that applies
    them defaulted to fixed<16,8> (8 fraction bits), which rounds them to 0."""
    hls4ml = pytest.importorskip("hls4ml")
    brevitas_nn = pytest.importorskip("brevitas.nn")
    import torch
    from brevitas.quant import Int8ActPerTensorFixedPoint
    from brevitas.quant.fixed_point import Int8WeightPerChannelFixedPoint
    from edgesdk.converters.hls4ml.graph import channels_last
    from edgesdk.converters.hls4ml.precision import choose_precision
    from edgesdk.converters.qat import export_brevitas
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        brevitas_nn.QuantIdentity(bit_width=8, act_quant=Int8ActPerTensorFixedPoint),
        brevitas_nn.QuantConv2d(1, 4, 3, bias=False, weight_bit_width=8,
                                weight_quant=Int8WeightPerChannelFixedPoint)).eval()
    with torch.no_grad():
        net[1].weight.mul_(0.05)  # small weights: fine power-of-two scales
    qonnx, _ = export_brevitas(net, (torch.randn(1, 1, 8, 8),), {})
    mw = channels_last(qonnx)
    x = [np.random.RandomState(0).randn(8, 8, 8, 1).astype(np.float32)]
    _, plan, _ = choose_precision(hls4ml, mw, "g", "g", get_target("ultra96-v2"), "io_stream",
                                  x, 16, True, {}, str(tmp_path))
    scale_type = [t for k, t in plan.items() if k.endswith(".scale")]
    assert len(scale_type) == 1
    low, high = type_range(scale_type[0])
    step = 2.0 ** (int(scale_type[0].split(",")[1].rstrip(">")) - int(
        scale_type[0].split("<")[1].split(",")[0]))
    scales = np.asarray(net[1].quant_weight().scale.detach()).ravel()
    assert scales.min() < 2.0 ** -8                       # below fixed<16,8>'s resolution
    assert (scales <= high).all() and np.all(scales / step == np.round(scales / step))


def test_types_in_every_spelling_hls4ml_reads_get_the_overflow_check():
    """ap_fixed / ap_int spellings used to skip the check: hls4ml's own parser reads them."""
    from edgesdk.converters.hls4ml.precision import check_overflow
    from edgesdk.errors import CalibrationError, InputError
    assert type_range("ap_fixed<12,4,AP_RND_CONV,AP_SAT>") == type_range("fixed<12,4>") == \
        (-8.0, 8.0 - 2.0 ** -8)
    assert type_range("ap_uint<4>") == (0.0, 15.0) and type_range("ap_int<8>") == (-128.0, 127.0)
    with pytest.raises(CalibrationError, match="ap_fixed<8,2> holds"):
        check_overflow("stage0", {"Conv_0": "ap_fixed<8,2>"}, {"Conv_0": (-5.0, 5.0)})
    check_overflow("stage0", {"Conv_0": "ap_fixed<8,4>"}, {"Conv_0": (-5.0, 5.0)})   # fits
    with pytest.raises(InputError, match="not a type hls4ml reads"):
        type_range("fixd<8,2>")
