"""Spatially sparse execution: a masked residual block run on its active regions matches the
dense masked block, on every region pattern, and computes only the active regions."""
import numpy as np
import pytest
import torch
from torch import nn

from edgesdk.converters import MultiExitModel, convert
from edgesdk.converters.spatial import MaskedBlock, branch_halo, validity_layers
from edgesdk.errors import ModelStructureError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.spatial import gather, runs, scatter
from models import Head, conv


class Masker(nn.Module):
    """Region logits from average-pooled features, centred and spread so that no decision
    sits near the threshold (they would flip between PyTorch and ONNX Runtime)."""

    def __init__(self, c, g, bias=0.0):
        super().__init__()
        self.pool = nn.AvgPool2d(g)
        self.score = nn.Conv2d(c, 1, 1)
        self.bias = bias

    def forward(self, x):
        return self.score(self.pool(x)) * 100.0 + self.bias


def _branch(c):
    return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))


def test_gather_lays_regions_side_by_side_and_scatters_them_back():
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 8, 12).astype(np.float32)
    keep = np.zeros((2, 2, 3), bool)
    keep[0, 1, 1:] = keep[1, 0, 0] = True          # a run of two regions, and one alone
    assert runs(keep) == [(0, 1, 1, 3), (1, 0, 0, 1)]
    mosaic, valid, placed = gather(x, keep, 4, 1)
    assert mosaic.shape == (1, 3, 6, 10 + 6) and valid.shape == (1, 1, 6, 16)
    assert placed == [(0, 1, 1, 3, 0), (1, 0, 0, 1, 10)]
    np.testing.assert_array_equal(mosaic[0, :, 1:5, 1:9], x[0, :, 4:8, 4:12])
    np.testing.assert_array_equal(mosaic[0, :, 1:5, 11:15], x[1, :, 0:4, 0:4])
    # Padding beyond the image: the first run's right and bottom halo, the corner's top-left.
    assert valid[0, 0, 5, :10].sum() == 0 and valid[0, 0, :, 9].sum() == 0
    assert valid[0, 0, 0, 10:].sum() == 0 and valid[0, 0, :, 10].sum() == 0
    assert valid[0, 0, 1:, 11:].all() and valid[0, 0, :5, :9].all()
    out = np.full((1, 3, 4, 16 - 2), 7.0, np.float32)     # what a 3x3 valid conv leaves
    got = scatter(x, out, placed, 4)
    computed = np.zeros(x.shape, bool)
    computed[1, :, :4, :4] = computed[0, :, 4:, 4:] = True
    assert (got[computed] == 7.0).all()
    np.testing.assert_array_equal(got[~computed], x[~computed])
    added = scatter(x, out, placed, 4, add=True) - x     # a patch graph of the branch alone
    np.testing.assert_allclose(added[computed], 7.0, atol=1e-5)
    assert (added[~computed] == 0).all()
    assert gather(x, keep, 4, 1, with_valid=False)[1] is None


def test_runs_cover_exactly_the_active_regions_in_maximal_runs():
    keep = np.random.RandomState(3).rand(3, 4, 5) < 0.5
    keep[2, 1, :] = True                              # a run across a whole row
    rebuilt = np.zeros_like(keep)
    found = runs(keep)
    for b, i, j0, j1 in found:
        assert not rebuilt[b, i, j0:j1].any() and j0 < j1
        rebuilt[b, i, j0:j1] = True
        assert (j0 == 0 or not keep[b, i, j0 - 1]) and (j1 == 5 or not keep[b, i, j1])
    np.testing.assert_array_equal(rebuilt, keep)
    assert (2, 1, 0, 5) in found and found == sorted(found)


def test_only_patch_replayable_branches_are_accepted():
    assert branch_halo(_branch(4)) == 2
    assert branch_halo(nn.Sequential(nn.Conv2d(4, 4, 3, padding=2, dilation=2))) == 2
    with pytest.raises(ModelStructureError, match="stride-1 convolutions"):
        branch_halo(nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1)))
    with pytest.raises(ModelStructureError, match="MaxPool2d"):
        branch_halo(nn.Sequential(nn.MaxPool2d(2)))
    # A convolution reading past the region after other layers needs the validity mask.
    assert validity_layers(_branch(4)) == [3]
    assert validity_layers(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(),
                                         nn.Conv2d(4, 4, 3, padding=1))) == [2]
    assert validity_layers(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(),   # pre-activation
                                         nn.Conv2d(4, 4, 3, padding=1))) == [2]
    assert validity_layers(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(4, 4, 1))) == []


def _shifted(module):
    """``module`` with random batch-norm statistics: not the identity, so the patch graph
    must apply them."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return module


BRANCHES = {   # name: (branch of 8 channels, halo, whether the patch graph takes validity)
    "two 3x3": (lambda: _branch(8), 2, True),
    "3x3 then 1x1": (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                           nn.ReLU(), nn.Conv2d(8, 8, 1)), 1, False),
    "pre-activation": (lambda: nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(),
                                             nn.Conv2d(8, 8, 3, padding=1)), 1, True)}


@pytest.mark.parametrize("bias,kind", [(-1e4, "two 3x3"), (0.0, "two 3x3"), (1e4, "two 3x3"),
                                       (0.0, "3x3 then 1x1"), (0.0, "pre-activation")])
def test_a_masked_block_runs_on_its_active_regions_as_the_dense_block_computes(
        tmp_path, mnist_split, bias, kind):      # no region, a mix, every region; branches
    torch.manual_seed(1)    # about a quarter of the regions active at bias 0
    branch, halo, with_valid = BRANCHES[kind]
    stem, masker = _shifted(conv(1, 8)), Masker(8, 4, bias)  # the same regions, any branch
    block = MaskedBlock(_shifted(branch()), masker, granularity=4)
    net = MultiExitModel([stem, block, _shifted(conv(8, 8, 2))],
                         [Head(8), Head(8), Head(8)]).eval()
    x = mnist_split[1][0][:32]
    with torch.no_grad():
        expected = [t.numpy() for t in net(torch.from_numpy(x))]
        active = block.keep(net.stages[0](torch.from_numpy(x))).mean().item()
    path = str(tmp_path / "masked.edgebundle")
    convert(net, x[:8], path, progress=False)
    model = load_bundle(path)
    stage = model.spatial_stages()[0]
    spec = model.bundle.manifest["stages"][1]["spatial"]
    assert spec["halo"] == halo and spec["patch"]["outputs"] == ["block"]
    assert spec["patch"]["inputs"] == ["patches", "valid"][:1 + with_valid]
    got = model.exit_logits(x)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5)
    if bias == 0.0:
        assert 0.1 < active < 0.9 and stage.active == round(active * stage.regions)
    else:
        assert active in (0.0, 1.0)


class SpreadMasker(nn.Module):
    """Region logits from the pooled feature intensity, spread so that thresholds along the
    calibration path keep different shares of regions (strokes more than background)."""

    def __init__(self, g):
        super().__init__()
        self.pool = nn.AvgPool2d(g)

    def forward(self, x):
        return (self.pool(x).mean(dim=1, keepdim=True) - 0.15) * 20.0


@pytest.fixture(scope="module")
def spread_bundle(tmp_path_factory, mnist_split):
    torch.manual_seed(1)
    block = MaskedBlock(_branch(8), SpreadMasker(4), granularity=4)
    net = MultiExitModel([conv(1, 8), block], [Head(8), Head(8)]).eval()
    path = str(tmp_path_factory.mktemp("spread") / "spread.edgebundle")
    convert(net, mnist_split[1][0][:8], path, progress=False)
    return path


def test_the_profiler_times_a_masked_block_at_each_active_fraction(spread_bundle):
    from edgesdk.runtime.profiler import SPATIAL_FRACTIONS, profile_bundle
    from edgesdk.runtime.spatial import region_pattern
    out = profile_bundle(spread_bundle, [2], warmup=1, repeats=3, min_seconds=0, warmup_s=0,
                         progress=False)
    rows = {r["graph"]: r for r in out["graphs"] if r["kind"] == "spatial"}
    assert sorted(rows) == sorted(["stage1/dense"] + ["stage1/active{}".format(int(100 * f))
                                                      for f in SPATIAL_FRACTIONS])
    assert all(r["batch"] == 2 and r["repeats"] >= 3 and r["mean_ms"] > 0 for r in rows.values())
    keep = region_pattern(2, 7, 7, 0.25)
    assert keep.sum() == round(0.25 * 98) and region_pattern(2, 7, 7, 0.25).tolist() == keep.tolist()


def _spatial_store(db, manifest, active_ms):
    """Every graph at 1 ms per sample, the masked block at ``active_ms(fraction)``."""
    from edgesdk.profiles import ProfileStore, graphs_sha256
    from edgesdk.runtime.profiler import SPATIAL_FRACTIONS
    values = {e["id"]: 1.0 for e in manifest["stages"] + manifest["exits"]}
    values.update({"stage1/active{}".format(int(100 * f)): active_ms(f) for f in SPATIAL_FRACTIONS})
    rows = [{"device": "board", "target": manifest["target"], "bundle_sha256": graphs_sha256(manifest),
             "graph": g, "build": "onnx", "precision": "fp32", "batch": 1, "resolution": "28x28",
             "metric": "mean_ms", "value": v, "sensor": "none", "sdk_version": "0.1.0",
             "measured_at": "2026-12-04T12:00:00Z"} for g, v in values.items()]
    with ProfileStore(db) as s:
        s.write(rows)


def test_calibrate_spatial_keeps_the_most_regions_that_fit_the_budget(spread_bundle, tmp_path,
                                                                      mnist_split):
    import shutil
    from edgesdk import bundle as bundle_io
    from edgesdk.converters.spatial_calibration import calibrate_spatial, spatial_cost
    from edgesdk.errors import CalibrationError
    path = str(tmp_path / "s.edgebundle")
    shutil.copytree(spread_bundle, path)
    db = str(tmp_path / "p.sqlite")
    manifest = bundle_io.read_bundle(path).manifest
    _spatial_store(db, manifest, lambda f: 0.2 + 2.0 * f)     # 0.2 ms, +2 ms when all active
    assert spatial_cost({("stage1/active0", "onnx", "fp32"): 0.2,
                         ("stage1/active100", "onnx", "fp32"): 2.2}, "stage1", 0.3) == \
        pytest.approx(0.8)
    x, y = mnist_split[1]
    # stage0 + the final head cost 2 ms: a budget of 3 ms leaves 0.8 ms, 30% of the regions.
    record = calibrate_spatial(path, x[:200], 3.0, db, y=y[:200])
    tried, chosen = record["tried"], record["chosen"]
    fractions = [t["active_fraction"]["stage1"] for t in tried]
    assert fractions == sorted(fractions, reverse=True) and fractions[0] > fractions[-1]
    for t, f in zip(tried, fractions):
        assert t["predicted_ms"] == pytest.approx(2.0 + 0.2 + 2.0 * f)
    fits = [t for t in tried if t["predicted_ms"] <= 3.0]
    assert fits and chosen == fits[0] and chosen["active_fraction"]["stage1"] <= 0.4
    spec = bundle_io.read_bundle(path).manifest["stages"][1]["spatial"]
    assert spec["threshold"] == chosen["threshold"] and spec["chosen_from"]["budget_ms"] == 3.0
    assert load_bundle(path).spatial_stages()[0].threshold == chosen["threshold"]
    with pytest.raises(CalibrationError, match="no keep threshold fits 1 ms"):
        calibrate_spatial(path, x[:50], 1.0, db)
    assert bundle_io.read_bundle(path).manifest["stages"][1]["spatial"]["threshold"] == \
        chosen["threshold"]   # unchanged
