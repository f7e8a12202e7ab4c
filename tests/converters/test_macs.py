"""MAC counts: hand-computed per op, equal to PyTorch's on an attention model exported with a
dynamic batch, and the nodes that cannot be counted reported (never silently 0)."""
import copy
import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgesdk import manifest as mf
from edgesdk.bundle import read_bundle
from edgesdk.converters import MultiExitModel, convert
from edgesdk.converters.macs import count_macs, einsum_macs
from edgesdk.converters.onnx_export import export_graph
from edgesdk.errors import InputError, ManifestError

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, weights=(), opset=13):
    """A one-graph ONNX model; ``inputs``/``outputs``: (name, dtype, shape) with str dims
    symbolic; ``weights``: name -> array."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in dict(weights).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _w(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


def test_conv_counts_per_sample_at_the_example_batch():
    # (N,3,8,8) -> 4 channels, 3x3, pad 1: 4*8*8 outputs x 3*9 products each.
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
               [("x", F, ["N", 3, 8, 8])], [("y", F, None)], {"w": _w(4, 3, 3, 3)})
    expected = 4 * 8 * 8 * 3 * 9
    assert count_macs(m) == (expected, [])
    assert count_macs(m, {"x": (5, 3, 8, 8)}) == (expected, [])


def test_grouped_and_strided_conv():
    # groups=4 on 8 channels: each output sums 2 input channels; stride 2 halves 10x10 to 5x5.
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=4, strides=[2, 2],
                                 pads=[1, 1, 1, 1])],
               [("x", F, ["N", 8, 10, 10])], [("y", F, None)], {"w": _w(8, 2, 3, 3)})
    assert count_macs(m, {"x": (2, 8, 10, 10)}).total == 8 * 5 * 5 * 2 * 9


def test_conv_transpose_counts_every_input_pixel_times_its_kernel():
    # (N,6,5,5) -> 4 channels, groups 2, 3x3 stride 2: each input pixel of each input channel
    # scatters into (4/2) x 9 outputs.
    m = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])],
               [("x", F, ["N", 6, 5, 5])], [("y", F, None)], {"w": _w(6, 2, 3, 3)})
    assert count_macs(m, {"x": (3, 6, 5, 5)}).total == 6 * 5 * 5 * 2 * 9


@pytest.mark.parametrize("trans_a, trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_with_transposed_operands(trans_a, trans_b):
    # Y(M=6, N=5) = op(A)(6, 7) @ op(B)(7, 5): 6*5*7 MACs whichever operand is transposed.
    a = (7, 6) if trans_a else (6, 7)
    b = (5, 7) if trans_b else (7, 5)
    m = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=trans_b)],
               [("a", F, list(a))], [("y", F, None)], {"b": _w(*b), "c": _w(5)})
    assert count_macs(m) == (6 * 5 * 7, [])


def test_batched_matmul_broadcasts_the_leading_dimensions():
    # (N, 1, 4, 6) @ (3, 6, 5) broadcasts to (N, 3, 4, 5) with K = 6.
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
               [("a", F, ["N", 1, 4, 6]), ("b", F, [3, 6, 5])], [("y", F, None)])
    assert count_macs(m, {"a": (2, 1, 4, 6), "b": (3, 6, 5)}).total == 3 * 4 * 5 * 6
    # A 1-D right operand is a vector: (N, 4, 6) @ (6,) -> (N, 4).
    v = _model([helper.make_node("MatMul", ["a", "v"], ["y"])],
               [("a", F, ["N", 4, 6])], [("y", F, None)], {"v": _w(6)})
    assert count_macs(v, {"a": (2, 4, 6)}).total == 4 * 6


def test_einsum_attention_scores():
    # 'bhqd,bhkd->bhqk': every (b, h, q, k, d) is one MAC.
    m = _model([helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhqd,bhkd->bhqk")],
               [("q", F, ["N", 2, 5, 8]), ("k", F, ["N", 2, 7, 8])], [("s", F, None)], opset=13)
    assert count_macs(m, {"q": (3, 2, 5, 8), "k": (3, 2, 7, 8)}) == (2 * 5 * 7 * 8, [])


def test_einsum_equations_beyond_two_plain_operands():
    # Implicit output, ellipsis with broadcasting, one operand, and three operands contracted
    # left to right ('ij,jk' first: i*j*k; then 'ik,kl' with j summed out: i*k*l).
    assert einsum_macs("ij,jk", [[2, 3], [3, 4]]) == 2 * 3 * 4
    assert einsum_macs("...ij,...jk->...ik", [[5, 1, 2, 3], [4, 3, 6]]) == 5 * 4 * 2 * 3 * 6
    assert einsum_macs("ii->i", [[4, 4]]) == 0
    assert einsum_macs("ij,jk,kl->il", [[2, 3], [3, 4], [4, 5]]) == 2 * 3 * 4 + 2 * 4 * 5
    with pytest.raises(ValueError, match="index 'j'"):
        einsum_macs("ij,jk", [[2, 3], [4, 5]])


def test_int8_matrix_ops_count_like_their_float_forms():
    u8 = TensorProto.UINT8
    scalars = {"s": np.float32(0.1), "zu": np.uint8(128), "zi": np.int8(0)}
    qmm = _model([helper.make_node("QLinearMatMul", ["a", "s", "zu", "b", "s", "zi", "s", "zu"],
                                   ["y"])],
                 [("a", u8, ["N", 4, 6])], [("y", u8, None)],
                 dict(scalars, b=_w(6, 5, dtype=np.int8)))
    assert count_macs(qmm, {"a": (2, 4, 6)}).total == 4 * 5 * 6
    mmi = _model([helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
                 [("a", u8, ["N", 6])], [("y", TensorProto.INT32, None)],
                 {"b": _w(6, 5, dtype=np.int8)})
    assert count_macs(mmi, {"a": (2, 6)}).total == 6 * 5
    qconv = _model([helper.make_node("QLinearConv", ["x", "s", "zu", "w", "s", "zi", "s", "zu"],
                                     ["y"], pads=[1, 1, 1, 1])],
                   [("x", u8, ["N", 3, 8, 8])], [("y", u8, None)],
                   dict(scalars, w=_w(4, 3, 3, 3, dtype=np.int8)))
    assert count_macs(qconv, {"x": (2, 3, 8, 8)}).total == 4 * 8 * 8 * 3 * 9
    iconv = _model([helper.make_node("ConvInteger", ["x", "w"], ["y"])],
                   [("x", u8, ["N", 3, 8, 8])], [("y", TensorProto.INT32, None)],
                   {"w": _w(4, 3, 3, 3, dtype=np.int8)})
    assert count_macs(iconv, {"x": (2, 3, 8, 8)}).total == 4 * 6 * 6 * 3 * 9


def test_unmodelled_and_unknown_nodes_are_reported_not_skipped():
    # An LSTM (matrix work not modelled), a custom-domain op, and a MatMul fed by the custom
    # op: no shape inference nor ONNX Runtime run can give its operand's shape.
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["seq"], hidden_size=4, name="rnn")
    custom = helper.make_node("Mystery", ["x2"], ["t"], domain="com.example", name="mystery")
    mm = helper.make_node("MatMul", ["t", "M"], ["y"], name="after_mystery")
    m = _model([lstm, custom, mm], [("x", F, [5, "N", 3]), ("x2", F, ["N", 6])],
               [("seq", F, None), ("y", F, None)],
               {"W": _w(1, 16, 3), "R": _w(1, 16, 4), "M": _w(6, 2)})
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    result = count_macs(m, {"x": (5, 2, 3), "x2": (2, 6)})
    assert result.total == 0
    assert [(u["node"], u["op"]) for u in result.uncounted] == [
        ("rnn", "LSTM"), ("mystery", "Mystery"), ("after_mystery", "MatMul")]
    whys = [u["why"] for u in result.uncounted]
    assert "does not model" in whys[0] and "com.example" in whys[1]
    assert "shape of 't' unknown" in whys[2] and "ONNX Runtime run failed" in whys[2]


def test_example_that_does_not_fit_the_graph_is_refused():
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", F, ["N", 6])],
               [("y", F, None)], {"b": _w(6, 5)})
    with pytest.raises(InputError, match="'a' has shape \\[2, 7\\]"):
        count_macs(m, {"a": (2, 7)})
    with pytest.raises(InputError, match="no input 'a'"):
        count_macs(m, {"x": (2, 6)})


class PatchAttention(nn.Module):
    """Patch embedding + one multi-head self-attention block, written the einops way:
    reshapes from the runtime batch ``x.shape[0]``, scores by einsum, ``attn @ v`` by matmul."""

    def __init__(self, dim=16, heads=4, patch=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        x = self.embed(x)
        b, c = x.shape[0], x.shape[1]
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(t).reshape(b, -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.einsum("bhqd,bhkd->bhqk", q, k).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, c)
        return self.proj(out).mean(1)


def pytorch_macs(module, x, extra):
    """MACs per sample from forward hooks on nn.Linear / nn.Conv2d, plus ``extra(x)`` for
    the matmuls written in forward()."""
    total = [0]

    def hook(mod, inputs, out):
        if isinstance(mod, nn.Linear):
            total[0] += inputs[0].numel() * mod.out_features
        else:
            kernel = mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += out.numel() * (mod.in_channels // mod.groups) * kernel
    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return (total[0] + extra(x)) // x.shape[0]


def attention_matmuls(x, dim=16, heads=4, patch=4):
    """Q @ K^T and attn @ V: batch x heads x tokens x tokens x head_dim each."""
    tokens = (x.shape[2] // patch) * (x.shape[3] // patch)
    return 2 * x.shape[0] * heads * tokens * tokens * (dim // heads)


def test_attention_model_with_a_dynamic_batch_counts_as_pytorch_does():
    torch.manual_seed(0)
    module = PatchAttention().eval()
    x = torch.randn(3, 3, 16, 16)
    g = export_graph(module, (x,), ["x"], ["y"], 13, "attention block")
    # The case that was silently wrong: plain shape inference at the concrete batch leaves
    # the attention operands symbolic (the reshape targets come from Shape -> Gather chains).
    fixed = copy.deepcopy(g)
    for d, v in zip(fixed.graph.input[0].type.tensor_type.shape.dim, x.shape):
        d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    known = {v.name for v in inferred.graph.value_info if v.type.tensor_type.HasField("shape")
             and all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim)}
    einsum = [n for n in g.graph.node if n.op_type == "Einsum"]
    assert einsum and not set(einsum[0].input) <= known

    expected = pytorch_macs(module, x, attention_matmuls)
    assert expected == 16 * 16 * 3 * 16 + 16 * (16 * 48 + 16 * 16) + 2 * 4 * 16 * 16 * 4
    assert count_macs(g, {"x": x.numpy()}) == (expected, [])
    assert count_macs(g, {"x": (1, 3, 16, 16)}) == (expected, [])


class GruHead(nn.Module):
    """A head reading the state as a sequence with a GRU (matrix work not modelled)."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(16, 8, batch_first=True)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        seq, _ = self.gru(x.flatten(2).transpose(1, 2))
        return self.fc(seq[:, -1])


class PatchStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = PatchAttention()

    def forward(self, x):  # keep the tokens as a (N, dim, 4, 4) state for the heads
        return self.block.embed(x)


class AttnHead(nn.Module):
    """Self-attention over the 4x4 tokens of a stage's (N, 16, 4, 4) state."""

    def __init__(self):
        super().__init__()
        self.attn = PatchAttention(patch=1)
        self.attn.embed = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, s):
        return self.fc(self.attn(s))


@pytest.fixture(scope="module")
def gru_bundle(tmp_path_factory):
    """(model, report) of a two-exit model: an attention head, then a GRU head."""
    torch.manual_seed(0)
    model = MultiExitModel([PatchStage(), nn.Conv2d(16, 16, 3, padding=1)], [AttnHead(), GruHead()])
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    out = tmp_path_factory.mktemp("macs") / "attn.edgebundle"
    return model, convert(model, x, str(out), progress=False)


def test_convert_records_counts_and_uncounted_nodes_in_the_manifest(gru_bundle):
    model, report = gru_bundle
    m = read_bundle(report.path).manifest
    expected_head0 = pytorch_macs(model.heads[0], torch.zeros(4, 16, 4, 4),
                                  lambda s: 2 * 4 * 4 * 16 * 16 * 4)
    assert m["exits"][0]["macs"] == expected_head0 and m["exits"][0]["macs_uncounted"] == []
    assert m["stages"][0]["macs"] == 16 * 4 * 4 * 3 * 16
    gru = m["exits"][1]["macs_uncounted"]
    assert [u["op"] for u in gru] == ["GRU"] and m["exits"][1]["macs"] == 8 * 10
    assert report.macs_uncounted == {"exit1": gru}
    from edgesdk.cli.convert import uncounted_lines
    lines = uncounted_lines(report.macs_uncounted)
    assert "exit1 MACs leave out 1 node(s)" in lines[0] and "(GRU)" in lines[1]


def test_inspect_marks_incomplete_counts_and_lists_the_nodes(gru_bundle, capsys):
    from edgesdk.cli import main
    assert main(["inspect", gru_bundle[1].path]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("exit1 ")]
    assert row and ">=0.00M" in row[0]
    assert "MACs not counted" in out and "exit1: " in out and "(GRU)" in out
    assert not [line for line in out.splitlines() if line.startswith("exit0 ") and ">=" in line]


def test_inspect_says_what_a_cost_fraction_is_a_fraction_of():
    from edgesdk.cli.inspect import _calibration_lines
    expected = {"accuracy": 0.9, "final_exit_accuracy": 0.91, "mean_cost_fraction": 0.556,
                "mean_cost": 1.0, "unit": "MACs"}
    chosen = {"method": "calibrate", "expected": expected, "data": {"samples": 600}}
    m = {"stages": [{"macs_uncounted": []}] * 2,
         "exits": [{"chosen_from": chosen}, {"chosen_from": {"method": "final exit"}}]}
    text = "\n".join(_calibration_lines(m))
    assert "mean cost 55.6%" in text and "counted MACs, head costs included" in text
    assert "not reliable" not in text
    m["stages"][1] = {"macs_uncounted": [{"node": "n", "op": "LSTM", "why": "not modelled"}]}
    assert "not reliable" in "\n".join(_calibration_lines(m))
    chosen["profile"] = {"metric": "mean_ms", "device": "tx2-01", "db": "p.db"}
    text = "\n".join(_calibration_lines(m))
    assert "measured mean_ms (profile of device tx2-01" in text and "MACs" not in text


def test_manifest_validates_uncounted_nodes(bundle_master):
    good = copy.deepcopy(read_bundle(bundle_master).manifest)
    assert all(e["macs_uncounted"] == [] for e in good["stages"] + good["exits"])
    old = copy.deepcopy(good)
    for e in old["stages"] + old["exits"]:
        del e["macs_uncounted"]            # manifests written before the field stay valid
    mf.validate(old)
    good["exits"][1]["macs_uncounted"] = [{"node": "n", "op": "LSTM", "why": "not modelled"}]
    mf.validate(good)
    import jsonschema
    with open(os.path.join(os.path.dirname(mf.__file__), "manifest.schema.json")) as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    assert list(validator.iter_errors(good)) == [] and list(validator.iter_errors(old)) == []
    for bad, path in (({"node": "n", "op": "LSTM"}, "$.exits[1].macs_uncounted[0]"),
                      ({"node": "", "op": "LSTM", "why": "x"}, "$.exits[1].macs_uncounted[0].node"),
                      ("LSTM", "$.exits[1].macs_uncounted[0]")):
        good["exits"][1]["macs_uncounted"] = [bad]
        with pytest.raises(ManifestError, match=path.replace("$", "\\$").replace("[", "\\[")):
            mf.validate(good)
        assert list(validator.iter_errors(good)), "the schema accepted what the validator refuses"
