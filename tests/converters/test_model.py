"""Multi-exit structure checks: wrong models fail at conversion with a clear message."""
import pytest
import torch
from torch import nn

from edgesdk.converters import MultiExitModel, convert
from edgesdk.converters.model import split_model, trace_structure
from edgesdk.errors import ModelStructureError
from models import Head, TinyNet, conv


def _check(stages, heads, x=None, model=None):
    x = torch.randn(2, 1, 28, 28) if x is None else x
    return trace_structure(model, nn.ModuleList(stages), nn.ModuleList(heads), x)


def test_tiny_net_structure():
    net = TinyNet().eval()
    stages, heads = split_model(net, "blocks", "exits")
    s = trace_structure(net, stages, heads, torch.randn(2, 1, 28, 28))
    assert s.num_classes == 10
    assert s.state_shapes == [[[2, 16, 14, 14]], [[2, 32, 7, 7]], [[2, 32, 4, 4]]]


def test_stage_output_that_does_not_feed_the_next_stage():
    with pytest.raises(ModelStructureError, match=r"stage 1 \(Sequential\) cannot take stage 0's output"):
        _check([conv(1, 8), conv(4, 8)], [Head(8), Head(8)])


def test_stage_returning_a_non_tensor():
    class Bad(nn.Module):
        def forward(self, x):
            return {"x": x}
    with pytest.raises(ModelStructureError, match="stage 0 output 0 is a dict"):
        _check([Bad()], [Head(1)])


def test_state_that_loses_the_batch_dimension():
    class Pool(nn.Module):
        def forward(self, x):
            return x.mean(dim=0)
    with pytest.raises(ModelStructureError, match="keep the batch"):
        _check([conv(1, 4), Pool()], [Head(4), Head(4)])


def test_head_with_wrong_output_shape_or_class_count():
    class Flat(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(ModelStructureError, match=r"must return logits of shape \(N, classes\)"):
        _check([conv(1, 4)], [Flat()])
    with pytest.raises(ModelStructureError, match="exit head 1 has 5 classes"):
        _check([conv(1, 4), conv(4, 4)], [Head(4), Head(4, classes=5)])


def test_forward_that_does_more_than_chaining_is_refused():
    class Sneaky(TinyNet):
        def forward(self, x):
            out = super().forward(x)
            out[1] = out[1] * 2.0
            return out
    net = Sneaky().eval()
    stages, heads = split_model(net, "blocks", "exits")
    with pytest.raises(ModelStructureError, match="forward's exit 1 differs"):
        trace_structure(net, stages, heads, torch.randn(2, 1, 28, 28))


def test_attribute_errors_name_the_fix():
    net = TinyNet()
    with pytest.raises(ModelStructureError, match="has no attribute 'stages'.*--stages-attr"):
        split_model(net)
    net.plain = [nn.Identity()]
    with pytest.raises(ModelStructureError, match="expected an nn.ModuleList"):
        split_model(net, "plain", "exits")
    with pytest.raises(ModelStructureError, match="one exit head per stage"):
        MultiExitModel(stages=[conv(1, 4), conv(4, 4)], heads=[Head(4)])


def test_unused_state_tensor_is_reported(tmp_path):
    class TwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = conv(1, 4)

        def forward(self, x):
            y = self.c(x)
            return y, y * 2

    class IgnoresSecond(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = conv(4, 4)

        def forward(self, a, b):
            return self.c(a)

    class HeadA(Head):
        def forward(self, a, b=None):
            return super().forward(a)
    model = MultiExitModel(stages=[TwoOut(), IgnoresSecond()], heads=[HeadA(4), Head(4)])
    with pytest.raises(ModelStructureError, match="does not use its input 1"):
        convert(model, torch.randn(2, 1, 28, 28), str(tmp_path / "m.edgebundle"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_structure_error_at_conversion_writes_nothing(tmp_path):
    model = MultiExitModel(stages=[conv(1, 8), conv(4, 8)], heads=[Head(8), Head(8)])
    with pytest.raises(ModelStructureError, match="cannot take stage 0's output"):
        convert(model, torch.randn(2, 1, 28, 28), str(tmp_path / "m.edgebundle"), progress=False)
    assert list(tmp_path.iterdir()) == []
