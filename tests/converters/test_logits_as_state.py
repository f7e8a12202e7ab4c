"""Exit outputs as state: stages and heads that read the previous exit's logits (boosted
heads, two-branch models), state tuples whose length changes, and heads that leave out a
tensor only the next stage reads. The bundle's exits match PyTorch's and nothing is computed
twice."""
import numpy as np
import pytest
import torch
from torch import nn

from edgesdk.converters import MultiExitModel, convert, takes_previous_logits
from edgesdk.errors import ModelStructureError
from edgesdk.runtime import load_bundle
from models import Head, conv


class BoostedHead(Head):
    """Adds its own logits to the previous exit's (boosting)."""

    def forward(self, x, previous):
        return super().forward(x) + previous


class LogitsGuided(nn.Module):
    """A stage that scales its features by the previous exit's confidence (two-branch
    early-exit networks feed the previous prediction into the next branch)."""

    def __init__(self, c_in, c, classes=10):
        super().__init__()
        self.body = conv(c_in, c, 2)
        self.gain = nn.Linear(classes, c)

    def forward(self, x, previous):
        return self.body(x) * torch.sigmoid(self.gain(previous))[:, :, None, None]


class ThreeScales(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(1, 4), conv(1, 4, 2), conv(1, 4, 4)

    def forward(self, x):
        return self.a(x), self.b(x), self.c(x)


class TwoFromThree(nn.Module):
    def __init__(self):
        super().__init__()
        self.fine = conv(4, 8, 2)

    def forward(self, a, b, c):
        return self.fine(a) + b.repeat(1, 2, 1, 1), c


class FineOnlyHead(Head):
    """Reads the first of three state tensors: the other two only feed the next stage."""

    def forward(self, a, b, c):
        return super().forward(a)


class TwoScaleHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 10)

    def forward(self, fine, coarse):
        return self.fc(torch.cat([fine.mean((2, 3)), coarse.mean((2, 3))], 1))


def _converted(model, tmp_path, mnist_split):
    torch.manual_seed(0)
    x = mnist_split[1][0][:16]
    path = str(tmp_path / "m.edgebundle")
    report = convert(model.eval(), x[:8], path, progress=False)
    with torch.no_grad():
        expected = [t.numpy() for t in model(torch.from_numpy(x))]
    return load_bundle(path), report, x, expected


def test_boosted_heads_and_logit_guided_stages_match_pytorch(tmp_path, mnist_split):
    torch.manual_seed(0)
    model = MultiExitModel(
        stages=[conv(1, 8, 2), takes_previous_logits(LogitsGuided(8, 8)), conv(8, 8)],
        heads=[Head(8), Head(8), takes_previous_logits(BoostedHead(8))])
    bundle, report, x, expected = _converted(model, tmp_path, mnist_split)
    got = bundle.exit_logits(x)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-3)
    m = bundle.bundle.manifest
    # Exit k-1's logits are computed once, in stage k-1's graph, and carried as its last
    # state tensor; head k-1 hands them on. Stage 2 passes exit 1's on for head 2.
    assert [len(s["outputs"]) for s in m["stages"]] == [2, 2, 2]
    assert m["stages"][0]["output_shapes"][-1] == [None, 10]
    assert m["exits"][0]["macs"] == 0 and m["exits"][1]["macs"] == 0 and m["exits"][2]["macs"] > 0
    assert report.warnings == []
    # Early exits run as any bundle's: with a threshold every sample leaves at exit 0.
    out = bundle.run(x, thresholds=[0.0, None, None])
    assert set(r.exit_index for r in out) == {0}


def test_state_of_three_then_two_tensors_with_a_head_reading_one(tmp_path, mnist_split):
    model = MultiExitModel(stages=[ThreeScales(), TwoFromThree()],
                           heads=[FineOnlyHead(4), TwoScaleHead()])
    bundle, report, x, expected = _converted(model, tmp_path, mnist_split)
    for g, e in zip(bundle.exit_logits(x), expected):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-3)
    m = bundle.bundle.manifest
    assert [len(s["outputs"]) for s in m["stages"]] == [3, 2]
    # The head's graph keeps the inputs it does not read (the runtime feeds by position).
    assert len(m["exits"][0]["inputs"]) == 3
    assert report.warnings == ["exit head 0 does not read s0_1, s0_2 of stage 0's outputs; "
                               "only stage 1 does"]


def test_the_first_stage_has_no_previous_logits(tmp_path):
    model = MultiExitModel(stages=[takes_previous_logits(LogitsGuided(1, 8)), conv(8, 8)],
                           heads=[Head(8), Head(8)])
    with pytest.raises(ModelStructureError, match="stage 0 and exit head 0 have no previous exit"):
        convert(model.eval(), torch.randn(2, 1, 28, 28), str(tmp_path / "m.edgebundle"),
                progress=False)
