"""Conversion writes checked ONNX graphs per stage and head, verified against PyTorch."""
import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import snapshot
from edgesdk.converters import MultiExitModel, convert
from edgesdk.converters.macs import count_macs
from edgesdk.errors import BundleError, ConversionError, InputError, UnknownNameError
from edgesdk.runtime import load_bundle
from margins import decisive
from models import Head, TinyNet, two_scale_model


def test_bundle_layout_opset_and_verification(bundle_master):
    m = json.load(open(os.path.join(bundle_master, "manifest.json")))
    assert [s["file"] for s in m["stages"]] == ["stages/stage{}.onnx".format(k) for k in range(3)]
    assert [e["file"] for e in m["exits"]] == ["heads/exit{}.onnx".format(k) for k in range(3)]
    for rel in m["files"]:
        if rel.endswith(".onnx"):
            g = onnx.load(os.path.join(bundle_master, rel))
            onnx.checker.check_model(g, full_check=True)
            assert [o.version for o in g.opset_import if o.domain in ("", "ai.onnx")] == [13]
            assert g.ir_version <= 7  # readable by onnxruntime builds on the boards
            assert g.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert m["built_with"]["opset"] == 13 and m["built_with"]["torch"].startswith("2.13")
    assert m["inputs"][0]["shape"] == [None, 1, 28, 28]
    assert m["exits"][0]["threshold"] is None and m["exits"][0]["chosen_from"]["method"] == "uncalibrated"
    assert [p["name"] for p in m["provenance"]["passes"]] == ["onnx-export", "onnx-checker",
                                                               "onnxruntime-verify"]
    assert len(m["provenance"]["source_sha256"]) == 64


def test_report_errors_are_small_and_reference_is_stored(trained_tiny, mnist_split, tmp_path):
    _, (x, _) = mnist_split
    rep = convert(trained_tiny, x[:4], str(tmp_path / "a.edgebundle"), stages_attr="blocks",
                  heads_attr="exits", threshold=0.9, opset=17, progress=False)
    assert len(rep.max_abs_error) == 3 and max(rep.max_abs_error) < 1e-4
    model = load_bundle(rep.path)
    assert model.thresholds == [0.9, 0.9, None]
    with np.load(os.path.join(rep.path, "reference", "reference.npz")) as ref:
        with torch.no_grad():
            expected = trained_tiny(torch.from_numpy(x[:4]))
        for k in range(3):
            np.testing.assert_allclose(ref["exit_{}".format(k)], expected[k].numpy(), rtol=1e-6)
    g = onnx.load(os.path.join(rep.path, "stages", "stage0.onnx"))
    assert [o.version for o in g.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_tuple_state_converts_and_runs(tmp_path):
    torch.manual_seed(0)
    model = two_scale_model().eval()
    x = torch.randn(3, 1, 16, 16)
    rep = convert(model, x, str(tmp_path / "two.edgebundle"), progress=False)
    m = json.load(open(os.path.join(rep.path, "manifest.json")))
    assert m["stages"][0]["outputs"] == ["s0_0", "s0_1"]
    assert m["stages"][1]["inputs"] == ["s0_0", "s0_1"]
    assert m["stages"][0]["output_shapes"] == [[None, 4, 16, 16], [None, 4, 8, 8]]
    got = load_bundle(rep.path).run(x.numpy(), early_exit=False)
    with torch.no_grad():
        want = model(x)[-1].numpy()
    assert decisive(want).all()   # no near-tie whose argmax float error could flip
    assert (got.labels == want.argmax(1)).all()


def test_graph_that_disagrees_with_pytorch_fails_and_writes_nothing(tmp_path):
    class Branchy(nn.Module):
        """Data-dependent control flow: tracing bakes in the branch of the example input."""

        def forward(self, x):
            return x * 2.0 if float(x.sum()) > 0 else x * -3.0
    model = MultiExitModel(stages=[Branchy()], heads=[Head(1)])
    example = torch.ones(2, 1, 8, 8)
    with pytest.raises(ConversionError, match=r"disagrees with PyTorch at exit\(s\) \[0\].*Nothing was written"):
        convert(model, example, str(tmp_path / "b.edgebundle"), reference_input=-example,
                progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unexportable_op_is_a_conversion_error(tmp_path):
    class Fft(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real
    model = MultiExitModel(stages=[Fft()], heads=[Head(1)])
    with pytest.raises(ConversionError, match="exporting stage 0 \\(Fft\\) to ONNX opset 13 failed"):
        convert(model, torch.randn(2, 1, 8, 8), str(tmp_path / "f.edgebundle"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_force(bundle, trained_tiny, mnist_split):
    before = snapshot(bundle)
    _, (x, _) = mnist_split
    with pytest.raises(BundleError, match="already exists"):
        convert(trained_tiny, x[:2], bundle, stages_attr="blocks", heads_attr="exits", progress=False)
    assert snapshot(bundle) == before
    convert(trained_tiny, x[:2], bundle, stages_attr="blocks", heads_attr="exits", force=True,
            threshold=0.5, progress=False)
    assert load_bundle(bundle).thresholds[0] == 0.5


@pytest.mark.parametrize("kwargs, error, message", [
    ({"target": "jetson-tk1"}, UnknownNameError, "unknown target 'jetson-tk1'; valid names: host"),
    ({"policy": "coin-flip"}, UnknownNameError, "valid names: entropy, margin, max-softmax"),
    ({"threshold": 1.5}, InputError, "outside"),
    ({"opset": 5}, InputError, "opset 5"),
    ({"example_input": np.full((2, 1, 28, 28), np.nan, np.float32)}, InputError, "NaN"),
    ({"output_name": "plain_dir"}, InputError, "end in '.edgebundle'"),
])
def test_bad_arguments_are_refused_before_writing(tmp_path, kwargs, error, message):
    kwargs = dict(kwargs)
    x = kwargs.pop("example_input", np.zeros((2, 1, 28, 28), np.float32))
    out = str(tmp_path / kwargs.pop("output_name", "t.edgebundle"))
    with pytest.raises(error, match=message):
        convert(TinyNet(), x, out, stages_attr="blocks", heads_attr="exits", progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_mac_count_of_known_layers():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)     # 4 * 8*8 * 3 * 9 = 6912
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)  # 4 * 8*8 * 1 * 9 = 2304
            self.fc = nn.Linear(4, 10)                     # 40

        def forward(self, x):
            return self.fc(self.dw(self.conv(x)).mean(dim=(2, 3)))
    from edgesdk.converters.onnx_export import export_graph
    g = export_graph(Net().eval(), (torch.randn(2, 3, 8, 8),), ["x"], ["y"], 13, "test net")
    assert count_macs(g, {"x": (2, 3, 8, 8)}) == (6912 + 2304 + 40, [])
