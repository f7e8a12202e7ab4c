"""Quantization-aware models from PyTorch: exported as Q/DQ INT8 graphs, validated, never
quantized twice."""
import copy

import numpy as np
import onnx
import pytest
import torch

from conftest import PREPROCESSING
from edgesdk.bundle import read_bundle
from edgesdk.cli import main
from edgesdk.converters import convert
from edgesdk.converters.qat import check_qdq, count_qdq
from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle

KW = dict(stages_attr="blocks", heads_attr="exits", preprocessing=PREPROCESSING, progress=False)


def _qat(model, x, y, version=0):
    from models import train_quickly
    q = copy.deepcopy(model).train()
    q.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86", version=version)
    torch.ao.quantization.prepare_qat(q, inplace=True)
    return train_quickly(q, x, y).eval()


@pytest.fixture(scope="module")
def qat_model(trained_tiny, mnist_split):
    (x, y), _ = mnist_split
    return _qat(trained_tiny, x[:1000], y[:1000])


def test_qat_model_converts_as_int8_and_runs(qat_model, mnist_split, tmp_path):
    _, (x, y) = mnist_split
    out = tmp_path / "qat.edgebundle"
    report = convert(qat_model, x[:8], str(out), **KW)
    assert max(report.max_abs_error) < 0.25
    bundle = read_bundle(str(out))
    m = bundle.manifest
    assert all(e["precision"] == "int8" and "builds" not in e for e in m["stages"] + m["exits"])
    assert m["quantization"]["source"].startswith("quantization-aware training")
    for e in m["stages"]:
        graph = onnx.load(bundle.path(e["file"]))
        assert count_qdq(graph) > 0 and check_qdq(graph, e["id"]) == []
    model = load_bundle(str(out))
    acc = float((model.run(x, early_exit=False).labels == y).mean())
    with torch.no_grad():
        torch_acc = float((qat_model(torch.from_numpy(x))[-1].argmax(1).numpy() == y).mean())
    assert acc > 0.85 and abs(acc - torch_acc) < 0.02
    assert main(["validate", str(out), "--check"]) == 0
    # The caller's model still observes (only the exported copy was frozen).
    fq = next(m for m in qat_model.modules() if isinstance(m, torch.ao.quantization.FakeQuantize))
    assert int(fq.observer_enabled[0]) == 1


def test_quantizing_twice_and_fused_fake_quant_are_refused(qat_model, trained_tiny, mnist_split,
                                                           tmp_path):
    (xt, yt), (x, y) = mnist_split
    out = tmp_path / "q.edgebundle"
    with pytest.raises(InputError, match="already quantized"):
        convert(qat_model, x[:8], str(out), quantize="int8", calibration_data=(x, y), **KW)
    fused = _qat(trained_tiny, xt[:200], yt[:200], version=1)
    with pytest.raises(InputError, match="version=0"):
        convert(fused, x[:8], str(out), **KW)
    assert not out.exists()


def test_bad_qdq_nodes_are_named():
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q1"),
             helper.make_node("DequantizeLinear", ["q", "s2", "z2"], ["y"], name="d1")]
    inits = [numpy_helper.from_array(np.array(-1.0, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s2"),
             numpy_helper.from_array(np.array(0, np.int16), "z2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    problems = check_qdq(helper.make_model(g), "stage0")
    assert problems == ["stage0 QuantizeLinear 'q1': scale must be positive and finite",
                        "stage0 DequantizeLinear 'd1': zero point is int16, expected int8 or uint8"]


def _brevitas_net():
    """A W4A8 multi-exit net built from Brevitas layers."""
    import brevitas.nn as qnn
    from torch import nn
    from edgesdk.converters import MultiExitModel

    def conv(c_in, c_out):
        return [qnn.QuantConv2d(c_in, c_out, 3, padding=1, stride=2, weight_bit_width=4,
                                bias=False), nn.BatchNorm2d(c_out), qnn.QuantReLU(bit_width=8)]
    stages = [nn.Sequential(qnn.QuantIdentity(bit_width=8), *conv(1, 8)), nn.Sequential(*conv(8, 16))]
    heads = [nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), qnn.QuantLinear(8 * 7 * 7, 10, bias=True,
                                                                            weight_bit_width=4)),
             nn.Sequential(nn.Flatten(), qnn.QuantLinear(16 * 7 * 7, 10, bias=True, weight_bit_width=4))]
    return MultiExitModel(stages, heads)


def test_brevitas_w4a8_model_converts_through_qonnx(mnist_split, tmp_path):
    pytest.importorskip("brevitas", reason="the qat extra is not installed")
    from models import train_quickly
    (x, y), (xc, yc) = mnist_split
    torch.manual_seed(0)
    net = train_quickly(_brevitas_net(), x[:1000], y[:1000]).eval()
    out = tmp_path / "brevitas.edgebundle"
    report = convert(net, xc[:8], str(out), preprocessing=PREPROCESSING, progress=False)
    assert max(report.max_abs_error) < 0.25
    bundle = read_bundle(str(out))
    m = bundle.manifest
    assert "Brevitas" in m["quantization"]["source"]
    for e in m["stages"] + m["exits"]:
        assert e["precision"] == "int8"
        source = onnx.load(bundle.path(e["qonnx"]["file"]))
        assert any(n.op_type == "Quant" for n in source.graph.node)        # QONNX kept
        assert not any(n.op_type == "Quant" for n in onnx.load(bundle.path(e["file"])).graph.node)
    assert m["stages"][1]["qonnx"]["bit_widths"] == [4, 8]
    acc = float((load_bundle(str(out)).run(xc, early_exit=False).labels == yc).mean())
    with torch.no_grad():
        torch_acc = float((net(torch.from_numpy(xc))[-1].argmax(1).numpy() == yc).mean())
    assert acc > 0.7 and abs(acc - torch_acc) < 0.02
