"""Layer skipping with a gate and channel skipping with width variants and a router: the
runtime's per-sample choices match the same choices made in PyTorch, skipped samples really
skip the stage graph, and what cannot work is refused."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import PREPROCESSING, snapshot
from margins import decisive, threshold_with_margin

from edgesdk.errors import BundleError, InputError
from edgesdk.runtime.engine import load_bundle


def _nets():
    import torch
    from torch import nn
    from models import Head, conv

    class ResBlock(nn.Module):
        def __init__(self, c, hidden):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, hidden, 3, 1, 1), nn.ReLU(),
                                      nn.Conv2d(hidden, c, 3, 1, 1))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    class Gate(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))

        def forward(self, x):
            return self.fc(x)

    from edgesdk.converters import MultiExitModel
    torch.manual_seed(0)
    net = MultiExitModel([conv(1, 8, 2), ResBlock(8, 8), ResBlock(8, 8)],
                         [Head(8), Head(8), Head(8)])
    gate, narrow = Gate(8), ResBlock(8, 4)
    with torch.no_grad():
        gate.fc[2].weight.normal_(0, 1.0)
    return net.eval(), gate.eval(), narrow.eval()


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory, mnist_split):
    import torch
    from models import train_quickly
    from edgesdk.converters import convert
    from edgesdk.converters.adaptive_stages import add_gate, add_width_variants
    (x, y), (xc, _) = mnist_split
    net, gate, narrow = _nets()
    net = train_quickly(net, x[:500], y[:500], epochs=1).eval()
    # Centre the gate on this data (many samples skip, many do not) with its decision
    # boundary (logit 0, sigmoid 0.5) in a wide gap between samples' logits: at the median
    # itself one sample sat exactly on it and flipped between PyTorch and ONNX Runtime on
    # AVX-512 machines. The tests compare decisions on these 200 samples (and subsets).
    with torch.no_grad():
        logits = gate(net.stages[0](torch.from_numpy(xc[:200])))[:, 0].numpy()
        gate.fc[2].bias -= threshold_with_margin(logits, 0.5)[0]
    path = str(tmp_path_factory.mktemp("adaptive") / "res.edgebundle")
    convert(net, xc[:8], path, preprocessing=PREPROCESSING, progress=False)
    add_gate(path, 1, gate, xc[:16], threshold=0.5)
    # The router's bound near the median confidence of exit 1, also in a gap between samples.
    bound = threshold_with_margin(_reference(net, gate, narrow, xc[:200])[1][1].max(axis=1),
                                  0.5)[0]
    add_width_variants(path, "stage2", [(0.5, narrow)], xc[:16], bounds=[bound])
    return path, net, gate, narrow, bound


def _reference(net, gate, narrow, x, bound=1.0, threshold=0.5):
    """Every exit's logits with the same per-sample choices made in PyTorch, the skip mask,
    the narrow mask and exit 1's probabilities."""
    import torch
    with torch.no_grad():
        t = torch.from_numpy(x)
        s0 = net.stages[0](t)
        skip = torch.sigmoid(gate(s0))[:, 0] >= threshold
        s1 = torch.where(skip[:, None, None, None], s0, net.stages[1](s0))
        p1 = torch.softmax(net.heads[1](s1), 1)
        narrow_rows = p1.max(1).values >= bound
        s2 = torch.where(narrow_rows[:, None, None, None], narrow(s1), net.stages[2](s1))
        logits = [net.heads[0](s0), net.heads[1](s1), net.heads[2](s2)]
    return [l.numpy() for l in logits], (skip.numpy(), p1.numpy()), narrow_rows.numpy()


def test_gates_and_routers_choose_per_sample_as_pytorch_does(adaptive, mnist_split):
    path, net, gate, narrow, bound = adaptive
    _, (xc, _) = mnist_split
    x = xc[:200]
    want, (skip, _), narrow_rows = _reference(net, gate, narrow, x, bound)
    assert 0 < skip.sum() < len(x), skip.sum()
    assert 0 < narrow_rows.sum() < len(x), narrow_rows.sum()   # both choices occur
    model = load_bundle(path)
    stage1, stage2 = model.stages[1], model.stages[2]
    got = model.exit_logits(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3)
    assert stage1.skipped == skip.sum() and stage1.ran == len(x) - skip.sum()
    assert stage2.routed.tolist() == [len(x) - narrow_rows.sum(), narrow_rows.sum()]
    # run() hands the router the exit's probabilities it already has (no second head call).
    calls = []
    head = stage2.prev_head
    stage2.prev_head = type("Counting", (), {"run": lambda self, s: calls.append(1) or head.run(s)})()
    result = model.run(x, thresholds=[None, 0.999, None])
    assert calls == []
    leaving = result.exit_index == 1
    chosen = np.where(leaving[:, None], want[1], want[2])
    # Labels compared where PyTorch's top two logits are not within float error of a tie.
    clear = decisive(chosen)
    assert clear.mean() > 0.9, clear.mean()
    np.testing.assert_array_equal(result.labels[clear], chosen[clear].argmax(axis=1))
    # Switched off, every sample runs the full stages.
    for s in model.adaptive_stages():
        s.enabled = False
    full = model.exit_logits(x)[2]
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(full, want[2], atol=1e-4)


def test_skipped_samples_do_not_reach_the_stage_graph(adaptive, mnist_split):
    path, net, gate, narrow, bound = adaptive
    _, (xc, _) = mnist_split
    model = load_bundle(path)
    seen = []
    inner = model.stages[1].stage
    model.stages[1].stage = type("Spy", (), {"run": lambda self, s: seen.append(len(s[0])) or
                                             inner.run(s)})()
    _, (skip, _), _ = _reference(net, gate, narrow, xc[:64], bound)
    model.exit_logits(xc[:64])
    assert seen == [64 - skip.sum()]


def test_a_router_that_selects_a_missing_variant_is_refused(adaptive, mnist_split, tmp_path):
    path = adaptive[0]
    _, (xc, _) = mnist_split
    model = load_bundle(path)
    model.stages[2].router = type("Wild", (), {"route": lambda self, p: np.full(len(p), 3)})()
    with pytest.raises(BundleError, match="chose variant 3 but the stage has variants 0..1"):
        model.run(xc[:4], thresholds=[None, None, None])
    # A manifest whose router has more choices than the stage has variants.
    from edgesdk.bundle import update_manifest
    copy = str(tmp_path / "copy.edgebundle")
    shutil.copytree(path, copy)

    def more_bounds(m):
        m["stages"][2]["widths"]["router"]["bounds"] = [0.5, 0.8]
    update_manifest(copy, more_bounds)
    with pytest.raises(BundleError, match="would select a variant the bundle lacks"):
        load_bundle(copy)


def test_what_cannot_be_skipped_or_routed_is_refused(adaptive, mnist_split):
    from edgesdk.converters.adaptive_stages import add_gate, add_width_variants
    path, net, gate, narrow, _ = adaptive
    _, (xc, _) = mnist_split
    before = snapshot(path)
    with pytest.raises(InputError, match="only a stage whose output has its input's shapes"):
        add_gate(path, 0, gate, xc[:4])
    with pytest.raises(InputError, match="no previous exit for a router"):
        add_width_variants(path, 0, [(0.5, narrow)], xc[:4], bounds=[0.5])
    with pytest.raises(InputError, match="2 router bounds for 1 variants"):
        add_width_variants(path, 2, [(0.5, narrow)], xc[:4], bounds=[0.5, 0.7])
    with pytest.raises(InputError, match="ascending numbers in"):
        add_width_variants(path, 2, [(0.5, narrow)], xc[:4], bounds=[1.5])
    with pytest.raises(InputError, match="no stage 'stage9'"):
        add_gate(path, "stage9", gate, xc[:4])
    assert snapshot(path) == before
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert manifest["stages"][1]["gate"]["file"] == "gates/stage1.onnx"
    assert manifest["stages"][2]["widths"]["variants"][0]["id"] == "stage2.w50"


def test_one_model_serves_several_threads(adaptive, mnist_split):
    """Threads sharing one model with gates and a router get the answers a lone caller gets:
    each call's router reads its own exit probabilities, and the counters add up."""
    from concurrent.futures import ThreadPoolExecutor
    path = adaptive[0]
    _, (xc, _) = mnist_split
    model = load_bundle(path, threads=1)
    thr = [None, 0.999, None]
    slices = [xc[i:i + n] for i, n in zip(range(0, 480, 40), [1, 3, 40, 7, 16, 2] * 2)]
    alone = [model.run(x, thresholds=thr) for x in slices]
    stage1, stage2 = model.stages[1], model.stages[2]
    stage1.skipped = stage1.ran = 0
    stage2.routed[:] = 0
    rounds = 5
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: model.run(slices[i % len(slices)], thresholds=thr),
                                 range(rounds * len(slices))))
    for i, got in enumerate(together):
        want = alone[i % len(slices)]
        np.testing.assert_array_equal(got.exit_index, want.exit_index)
        np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-6)
    samples = rounds * sum(len(x) for x in slices)
    assert stage1.skipped + stage1.ran == samples
    reached = rounds * sum(int((r.exit_index == 2).sum()) for r in alone)
    assert int(stage2.routed.sum()) == reached


def test_executors_that_are_not_reentrant_take_one_call_at_a_time():
    import threading
    import time
    from edgesdk.runtime.engine import _Serialized

    class NotReentrant(object):
        inside, overlaps = 0, 0

        def run(self, tensors):
            self.inside += 1
            self.overlaps += self.inside > 1
            time.sleep(0.002)
            self.inside -= 1
            return [tensors[0] * 2]

    graph = NotReentrant()
    serial = _Serialized(graph)
    threads = [threading.Thread(target=lambda: [serial.run([np.ones(1)]) for _ in range(20)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert graph.overlaps == 0 and serial.inside == 0


def test_a_bundle_with_gates_and_variants_passes_its_reference_check(adaptive, capsys):
    """The reference outputs are of the stages' own graphs: adding a gate and width variants
    (which change which samples run what) keeps `validate --check` passing."""
    from conftest import cli
    path = adaptive[0]
    code, out, err = cli(capsys, "validate", path, "--check")
    assert code == 0, err
    assert "passed" in out


def test_width_variants_of_a_stage_that_changes_shape_route_per_sample(tmp_path, mnist_split):
    """A downsampling stage (8 -> 16 channels, stride 2) with a narrower variant: a batch
    whose samples choose both gets each sample's own variant, as in PyTorch."""
    import torch
    from torch import nn
    from models import Head, conv
    from edgesdk.converters import MultiExitModel, convert
    from edgesdk.converters.adaptive_stages import add_width_variants
    (_, _), (xc, _) = mnist_split
    torch.manual_seed(3)

    def down(hidden):
        return nn.Sequential(nn.Conv2d(8, hidden, 3, 2, 1), nn.ReLU(), nn.Conv2d(hidden, 16, 1))
    net = MultiExitModel([conv(1, 8, 2), conv(8, 8), down(16)], [Head(8), Head(8), Head(16)]).eval()
    narrow = down(4).eval()
    x = xc[:64]
    with torch.no_grad():
        net.heads[1].fc.weight.mul_(40)   # spread exit 1's confidence (random weights)
        s1 = net.stages[1](net.stages[0](torch.from_numpy(x)))
        top = torch.softmax(net.heads[1](s1), 1).max(1).values.numpy()
        bound = threshold_with_margin(top, 0.5)[0]
        narrow_rows = top >= bound
        expected = torch.where(torch.from_numpy(narrow_rows)[:, None], net.heads[2](narrow(s1)),
                               net.heads[2](net.stages[2](s1))).numpy()
    assert 0 < narrow_rows.sum() < len(x)     # both variants in one batch
    path = str(tmp_path / "down.edgebundle")
    convert(net, xc[:8], path, preprocessing=PREPROCESSING, progress=False)
    add_width_variants(path, 2, [(0.25, narrow)], xc[:16], bounds=[bound])
    add_width_variants(path, 2, [(0.25, narrow)], xc[:16], bounds=[bound])   # again: replaced
    model = load_bundle(path)
    assert len(model.bundle.manifest["stages"][2]["widths"]["variants"]) == 1
    got = model.exit_logits(x)[2]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_learned_router_reads_the_state_and_can_skip(tmp_path, mnist_split):
    """A router graph (a trained masker's stand-in) scores full width, the narrow variant and
    skipping per sample from the stage's input; the runtime takes each sample's best score."""
    import torch
    from torch import nn
    from edgesdk.converters import convert
    from edgesdk.converters.adaptive_stages import add_width_variants
    (_, _), (xc, _) = mnist_split
    net, _, narrow = _nets()

    class Router(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

        def forward(self, x):
            return self.fc(x)
    torch.manual_seed(5)
    router = Router().eval()
    x = xc[:64]
    with torch.no_grad():
        s1 = net.stages[1](net.stages[0](torch.from_numpy(x)))
        # Random directions over the standardized pooled features: scores spread around 0,
        # so the three choices all occur and decisions sit far from ties.
        pooled = s1.mean((2, 3))
        w = torch.randn(3, 8) * 10 / (pooled.std(0) + 1e-6)
        router.fc[2].weight.copy_(w)
        router.fc[2].bias.copy_(-(pooled.mean(0) @ w.t()))
        scores = router(s1)
        top2 = torch.topk(scores, 2, dim=1).values
        choice = scores.argmax(1)
        s2 = torch.where((choice == 0)[:, None, None, None], net.stages[2](s1),
                         torch.where((choice == 1)[:, None, None, None], narrow(s1), s1))
        expected = net.heads[2](s2).numpy()
    assert len(set(choice.tolist())) == 3           # full, narrow and skipped in one batch
    decisive = (top2[:, 0] - top2[:, 1]).numpy() > 1e-3
    assert decisive.mean() > 0.9
    path = str(tmp_path / "routed.edgebundle")
    convert(net, xc[:8], path, preprocessing=PREPROCESSING, progress=False)
    add_width_variants(path, 2, [(0.5, narrow)], xc[:16], router=router, skip=True)
    model = load_bundle(path)
    stage = model.adaptive_stages()[0]
    got = model.exit_logits(x)[2]
    np.testing.assert_allclose(got[decisive], expected[decisive], atol=1e-4)
    assert stage.skipped == int((choice == 2).sum()) and stage.routed.sum() == 64 - stage.skipped
    # A router on a stage that changes shapes cannot skip; a wrong score count is refused.
    with pytest.raises(InputError, match=r"expected one tensor of \[N, 2\]"):
        add_width_variants(path, 2, [(0.5, narrow)], xc[:16], router=router)
