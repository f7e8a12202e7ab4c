"""Gated residual blocks inside a stage: each sample computes or skips each block's branch,
downsampling blocks included, with no exit head per block; the bundle matches PyTorch's gated
forward per sample, and the stage's own graph is the ungated network."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from edgesdk import bundle as bundle_io
from edgesdk.converters import MultiExitModel, convert
from edgesdk.converters.adaptive_stages import calibrate_gates
from edgesdk.converters.gated import GatedBlock, dense_gates
from edgesdk.errors import BundleError, ModelStructureError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.gated_stages import GatedStage
from models import Head, conv


class SignGate(nn.Module):
    """Skip logits far from any threshold: +-50 by the sign of one input pixel's mean over
    channels, so PyTorch and ONNX Runtime always decide alike (and about half skip)."""

    def __init__(self, offset=0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x):
        return torch.sign(x.mean(dim=1)[:, :1, 0] - self.offset) * 50.0


def _branch(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out))


def gated_model(offsets=(0.3, 0.3, 0.3)):
    """Stage 0: a stem conv then two identity-shortcut gated blocks (the last without a ReLU
    after its sum); stage 1: a downsampling gated block (projection shortcut) and a plain
    conv after it. Two exits only."""
    torch.manual_seed(0)
    a, b, c = offsets
    stage0 = nn.Sequential(conv(1, 8, 2),
                           GatedBlock(_branch(8, 8), SignGate(a), post=nn.ReLU()),
                           GatedBlock(_branch(8, 8), SignGate(b)))   # no post: no skip graph
    down = GatedBlock(_branch(8, 16, 2), SignGate(c),
                      shortcut=nn.Sequential(nn.Conv2d(8, 16, 1, 2), nn.BatchNorm2d(16)),
                      post=nn.ReLU())
    stage1 = nn.Sequential(down, conv(16, 16))
    model = MultiExitModel([stage0, stage1], [Head(8), Head(16)])
    for m in model.modules():    # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _inputs(n, seed=0):
    return np.random.RandomState(seed).randn(n, 1, 16, 16).astype(np.float32)


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory):
    model = gated_model()
    x = _inputs(8)
    path = str(tmp_path_factory.mktemp("gated") / "gated.edgebundle")
    convert(model, torch.from_numpy(x[:4]), path, target="host", progress=False)
    return path, model


def test_each_sample_skips_the_branches_its_gates_skip_and_matches_pytorch(gated_bundle):
    path, model = gated_bundle
    m = load_bundle(path)
    stages = m.adaptive_stages()
    assert [type(s) for s in stages] == [GatedStage, GatedStage]
    assert [len(s.blocks) for s in stages] == [2, 1] and len(m.heads) == 2
    x = _inputs(32, seed=1)
    with torch.no_grad():
        want = [l.numpy() for l in model(torch.from_numpy(x))]
    got = m.exit_logits(x, batch_size=32)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3)
    skipped = [b.skipped for s in stages for b in s.blocks]
    assert all(0 < k < 32 for k in skipped), skipped   # mixed batches in every block
    # Batch 1 agrees with the batch, sample by sample (all-run and all-skip paths).
    for i in (0, 1, 2, 3):
        one = m.exit_logits(x[i:i + 1], batch_size=1)
        np.testing.assert_allclose(one[1][0], got[1][i], atol=1e-4, rtol=1e-3)


def test_the_stage_graph_and_references_are_the_ungated_network(gated_bundle):
    path, model = gated_bundle
    m = load_bundle(path)
    x = _inputs(16, seed=2)
    with torch.no_grad(), dense_gates(model):
        dense = [l.numpy() for l in model(torch.from_numpy(x))]
    with torch.no_grad():
        gated = [l.numpy() for l in model(torch.from_numpy(x))]
    assert np.abs(dense[1] - gated[1]).max() > 1e-2   # the gates change the answer
    np.testing.assert_allclose(m.exit_logits(x, adaptive=False)[1], dense[1], atol=1e-4,
                               rtol=1e-3)
    for s in m.adaptive_stages():
        s.enabled = False
    np.testing.assert_allclose(m.exit_logits(x)[1], dense[1], atol=1e-4, rtol=1e-3)
    assert model.stages[0][1].gating    # convert restored the model's gates


def test_the_manifest_records_each_block_with_its_branch_macs(gated_bundle):
    path, _ = gated_bundle
    stages = bundle_io.read_bundle(path).manifest["stages"]
    blocks = [b for e in stages for b in e["gated"]["blocks"]]
    assert [b["shortcut"] for b in blocks] == [False, False, True]   # the projection
    assert [len(b["run"]["inputs"]) for b in blocks] == [1, 1, 2]
    assert all(b["threshold"] == 0.5 for b in blocks)
    # What skipping saves: the branch's two 3x3 convolutions (the strided one at 4x4 output).
    assert [b["macs"] for b in blocks] == [2 * 8 * 8 * 8 * 8 * 9] * 2 + [
        16 * 8 * 9 * 16 + 16 * 16 * 9 * 16]
    # The last block of stage 0 ends the stage without a ReLU: a skip there is the shortcut.
    assert blocks[1]["skip"] is None and blocks[0]["skip"] and blocks[2]["skip"]
    assert stages[0]["gated"]["entry"]["outputs"] == ["h0", "skip_logit0"]


def test_force_run_computes_every_branch_through_the_pieces(gated_bundle):
    path, model = gated_bundle
    m = load_bundle(path)
    x = _inputs(8, seed=3)
    for s in m.adaptive_stages():
        s.force_run = True
    with torch.no_grad(), dense_gates(model):
        dense = [l.numpy() for l in model(torch.from_numpy(x))]
    np.testing.assert_allclose(m.exit_logits(x)[1], dense[1], atol=1e-4, rtol=1e-3)
    assert sum(s.skipped for s in m.adaptive_stages()) == 0


def test_calibrate_gates_sets_every_block_threshold(gated_bundle, tmp_path):
    import shutil
    path, model = gated_bundle
    local = str(tmp_path / "g.edgebundle")
    shutil.copytree(path, local)
    x = _inputs(400, seed=4)
    with torch.no_grad():   # labels: the ungated network's answers, so gating can only lose
        with dense_gates(model):
            y = model(torch.from_numpy(x))[-1].argmax(1).numpy()
    chosen = calibrate_gates(local, x, y, max_accuracy_drop=100, confidence=0)
    assert sorted(chosen["thresholds"]) == ["stage0/0", "stage0/1", "stage1/0"]
    t = chosen["chosen_from"]["expected"]
    assert t["macs_skipped_fraction"] > 0 and set(t["skipped_fraction"]) == set(chosen["thresholds"])
    stages = bundle_io.read_bundle(local).manifest["stages"]
    assert {b["threshold"] for e in stages for b in e["gated"]["blocks"]} == \
        {next(iter(chosen["thresholds"].values()))}


def test_gated_blocks_nested_below_the_stage_are_refused(tmp_path):
    inner = nn.Sequential(conv(1, 8, 2), GatedBlock(_branch(8, 8), SignGate()))
    model = MultiExitModel([nn.Sequential(nn.Sequential(inner))], [Head(8)]).eval()
    with pytest.raises(ModelStructureError, match="direct children"):
        convert(model, torch.from_numpy(_inputs(2)), str(tmp_path / "n.edgebundle"),
                target="host", progress=False)


def test_a_manifest_whose_pieces_do_not_chain_is_refused(gated_bundle, tmp_path):
    import json
    import shutil
    path, _ = gated_bundle
    local = str(tmp_path / "bad.edgebundle")
    shutil.copytree(path, local)
    mpath = local + "/manifest.json"
    with open(mpath) as f:
        m = json.load(f)
    m["stages"][0]["gated"]["blocks"][1]["run"]["inputs"] = ["h0"]
    with open(mpath, "w") as f:
        json.dump(m, f)
    with pytest.raises(BundleError, match=r"blocks\[1\]\.run\.inputs.*expected \['h1'\]"):
        load_bundle(local)


def test_the_profiler_times_the_ungated_stage_beside_each_piece(gated_bundle):
    from edgesdk.runtime.profiler import profile_bundle
    path, _ = gated_bundle
    out = profile_bundle(path, [1, 4], warmup=1, repeats=3, min_seconds=0, warmup_s=0,
                         progress=False)
    gated = {(r["graph"], r["batch"]) for r in out["graphs"] if r["kind"] == "gated"}
    pieces = ["stage0/ungated", "stage0/entry", "stage0/run0", "stage0/skip0", "stage0/run1",
              "stage1/ungated", "stage1/entry", "stage1/run0", "stage1/skip0",
              "stage0/engine", "stage1/engine"]
    assert gated == {(g, b) for g in pieces for b in (1, 4)}
    assert all(r["mean_ms"] > 0 and r["repeats"] >= 3 for r in out["graphs"]
               if r["kind"] == "gated" and not r["graph"].endswith("engine"))


def _profile_store(db, manifest, piece_ms):
    """A store with every graph at 1 ms per call and the gated pieces at ``piece_ms(name)``."""
    from edgesdk.profiles import ProfileStore, graphs_sha256
    names = [e["id"] for e in manifest["stages"] + manifest["exits"]]
    for e in manifest["stages"]:
        names += ["{}/ungated".format(e["id"])]
        names += ["{}/entry".format(e["id"]), "{}/engine".format(e["id"])]
        names += ["{}/{}{}".format(e["id"], kind, i) for i, b in enumerate(e["gated"]["blocks"])
                  for kind in ("run", "skip") if kind == "run" or b["skip"]]
    rows = [{"device": "board", "target": "host", "bundle_sha256": graphs_sha256(manifest),
             "graph": g, "build": "onnx", "precision": "fp32", "batch": 1, "resolution": "16x16",
             "metric": "mean_ms", "value": piece_ms(g) if "/" in g else 1.0, "sensor": "none",
             "sdk_version": "0.1.0", "measured_at": "2026-12-04T12:00:00Z"} for g in names]
    with ProfileStore(db) as s:
        s.write(rows)


def _convert_with_profile(gated_bundle, tmp_path, cost):
    """The gated model converted again with a store holding ``cost`` for its gated pieces
    (every other graph 1 ms), on 64 calibration inputs: ``(report, bundle path)``."""
    path, model = gated_bundle
    db = str(tmp_path / "p.sqlite")
    _profile_store(db, bundle_io.read_bundle(path).manifest, cost.get)
    x = _inputs(64, seed=5)
    out = str(tmp_path / "chosen.edgebundle")
    report = convert(model, torch.from_numpy(x[:4]), out, target="host", progress=False,
                     calibration_data=(x, None), profile=db)
    return report, out


def test_convert_with_a_profile_drops_gates_that_cost_more_than_they_save(gated_bundle, tmp_path):
    # stage0's gates pay (a cheap entry, dear blocks, cheap skips); stage1's do not (its
    # entry alone costs more than the ungated stage).
    report, out = _convert_with_profile(gated_bundle, tmp_path, {
        "stage0/ungated": 2.0, "stage0/entry": 0.1, "stage0/run0": 1.0, "stage0/skip0": 0.1,
        "stage0/run1": 1.0, "stage0/engine": 0.01,
        "stage1/ungated": 1.0, "stage1/entry": 1.5, "stage1/run0": 0.5, "stage1/skip0": 0.1,
        "stage1/engine": 0.01})
    gates = report.choices["gates"]
    assert gates["stage0"]["kept"] and not gates["stage1"]["kept"]
    keep = gates["stage0"]["keep"]
    assert all(0 < k < 1 for k in keep)      # measured on the calibration inputs
    assert gates["stage0"]["gated"] == pytest.approx(
        0.11 + keep[0] + 0.1 * (1 - keep[0]) + keep[1])
    chosen = load_bundle(out)
    assert [s.id for s in chosen.adaptive_stages()] == ["stage0"]
    dropped = chosen.bundle.manifest["stages"][1]["gated"]["dropped"]
    g1 = gates["stage1"]
    assert g1["all_gates"] == pytest.approx(
        1.51 + 0.5 * g1["keep"][0] + 0.1 * (1 - g1["keep"][0]))
    assert g1["ungated"] == g1["gated"] == 1.0 and g1["dropped"] == [0]
    assert dropped["method"] == "dropped by profile" and "{:.4g}".format(g1["savings"][0]) in \
        dropped["reason"]


def test_convert_with_a_profile_drops_single_gates_and_computes_their_blocks(gated_bundle,
                                                                             tmp_path, capsys):
    from edgesdk.cli import main
    model = gated_bundle[1]
    # Stage 0: block 0's branch is dear and its gate pays; block 1's branch costs less than
    # the graph call its gate adds (0.08 per boundary: (0.1 + 0.01 + 1 + 0.05 - 1) / 2).
    report, out = _convert_with_profile(gated_bundle, tmp_path, {
        "stage0/ungated": 1.0, "stage0/entry": 0.1, "stage0/run0": 1.0, "stage0/skip0": 0.1,
        "stage0/run1": 0.05, "stage0/engine": 0.01,
        "stage1/ungated": 1.0, "stage1/entry": 0.1, "stage1/run0": 1.0, "stage1/skip0": 0.1,
        "stage1/engine": 0.01})
    g0 = report.choices["gates"]["stage0"]
    k0, k1 = g0["keep"]
    assert g0["savings"] == pytest.approx([(1 - k0) * 0.9 - 0.08, (1 - k1) * 0.05 - 0.08])
    assert g0["dropped"] == [1] and g0["kept"]
    assert g0["gated"] == pytest.approx(1.0 - g0["savings"][0])
    assert report.choices["gates"]["stage1"]["dropped"] == []
    chosen = load_bundle(out)
    spec = chosen.bundle.manifest["stages"][0]["gated"]
    assert [b["block"] for b in spec["blocks"]] == [0] and spec["dropped_gates"]["blocks"] == [1]
    pieces = ["stage0.entry.onnx", "stage0.onnx", "stage0.run0.onnx", "stage0.skip0.onnx"]
    assert sorted(f for f in os.listdir(os.path.join(out, "stages"))
                  if f.startswith("stage0.")) == pieces   # no piece of the first export left
    assert sorted(f for f in chosen.bundle.manifest["files"] if f.startswith("stages/stage0.")) \
        == ["stages/" + p for p in pieces]
    assert [b.id for b in chosen.adaptive_stages()[0].blocks] == ["stage0/0"]
    # Per sample: block 0 and stage 1's block still gated, block 1 always computed.
    xs = _inputs(32, seed=1)
    second = model.stages[0][2]
    second.gating = False
    try:
        with torch.no_grad():
            want = [l.numpy() for l in model(torch.from_numpy(xs))]
    finally:
        second.gating = True
    got = chosen.exit_logits(xs, batch_size=32)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-3)
    assert 0 < chosen.adaptive_stages()[0].blocks[0].skipped < 32
    with torch.no_grad():   # and the gate of block 1 did change answers: it was really dropped
        gated = model(torch.from_numpy(xs))[1].numpy()
    assert np.abs(gated - want[1]).max() > 1e-2
    capsys.readouterr()
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "stage0: 1 gated blocks, skip thresholds 0.5" in text
    assert "gates dropped (always computed): gates of blocks [1] predicted to save" in text


def test_inspect_lists_each_stages_gated_blocks(gated_bundle, capsys):
    from edgesdk.cli import main
    path, _ = gated_bundle
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "stage0: 2 gated blocks, skip thresholds 0.5 (saves 0.07M MACs)" in out
    assert "stage1: 1 gated blocks" in out


def test_convert_summarizes_what_the_profile_did_with_each_stages_gates():
    from edgesdk.cli.convert import _gates_line
    some = {"gated": 0.9, "ungated": 1.0, "savings": [0.1, -0.02], "dropped": [1], "kept": True}
    assert _gates_line(some) == ("each saves 0.1, -0.02 per sample; 0.9 per sample with blocks "
                                 "[1] always computed vs 1 ungated")
    none = dict(some, gated=1.0, savings=[-0.1, -0.02], dropped=[0, 1], kept=False)
    assert _gates_line(none) == ("each saves -0.1, -0.02 per sample: dropped, the stage's own "
                                 "graph (1) runs")
    assert _gates_line(dict(some, gated=None)) == "not measured (profile again): kept"
