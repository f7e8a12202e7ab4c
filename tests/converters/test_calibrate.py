"""Threshold calibration: the simulator matches the runtime, objectives hold, errors are clear."""
import json
import os

import numpy as np
import pytest

from conftest import PREPROCESSING, snapshot
from edgesdk.bundle import read_bundle
from edgesdk.converters import ExitSimulator, calibrate, choose_thresholds, risk, simulator_for
from edgesdk.errors import CalibrationError, InputError, UnknownNameError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.policies import Entropy, MaxSoftmax


def test_min_cost_within_accuracy_drop(bundle, mnist_split):
    _, (x, y) = mnist_split
    res = calibrate(bundle, x, y, max_accuracy_drop=1.0, progress=False)
    p = res.point
    assert p.accuracy >= res.final_exit_accuracy - 0.01
    assert res.cost_fraction < 0.9          # the trained tiny net does exit early
    assert p.thresholds[-1] is None and any(t is not None for t in p.thresholds[:-1])
    # The runtime, given the written thresholds, does exactly what the simulation predicted.
    model = load_bundle(bundle)
    assert model.thresholds == p.thresholds
    out = model.run(x)
    assert np.isclose((out.labels == y).mean(), p.accuracy)
    np.testing.assert_allclose(out.exit_counts() / len(y), p.exit_fractions)
    chosen = model.bundle.manifest["exits"][0]["chosen_from"]
    assert chosen["method"] == "calibrate" and chosen["data"]["samples"] == len(y)
    assert chosen["objective"] == {"kind": "min-cost-within-accuracy-drop",
                                   "max_accuracy_drop_points": 1.0, "confidence": 0.99}
    # The bound, n, the confidence and the method are recorded; the bound is the exact one of
    # the losses counted on this data.
    r = chosen["risk"]
    assert r["samples"] == len(y) and r["confidence"] == 0.99 and "clopper-pearson" in r["method"]
    assert r["accuracy_drop_bound_points"] <= 1.0 and r["settings_certified"] >= 2
    assert r["accuracy_drop_bound_points"] == pytest.approx(
        100 * risk.clopper_pearson_upper(r["losses"], len(y), 0.01))
    assert r == res.risk


def _sim(model, x, y):
    return simulator_for(model, model.exit_probabilities(x), y)


def test_exact_bound_certifies_and_costs_more_than_point_estimates(bundle, mnist_split):
    _, (x, y) = mnist_split
    sim = _sim(load_bundle(bundle), x, y)
    final = sim.evaluate([None] * sim.k).accuracy
    loose, _ = choose_thresholds(sim, max_accuracy_drop=2.0, confidence=0)
    strict, obj = choose_thresholds(sim, max_accuracy_drop=2.0, confidence=0.9)
    assert final - loose.accuracy <= 0.02 + 1e-12 and loose.risk["accuracy_drop_bound_points"] is None
    assert strict.risk["accuracy_drop_bound_points"] <= 2.0 and strict.mean_cost >= loose.mean_cost
    assert strict.losses == strict.risk["losses"] and strict.mean_cost < sim.full_cost
    assert obj["confidence"] == 0.9
    # A stricter target never buys a cheaper point.
    stricter, _ = choose_thresholds(sim, max_accuracy_drop=1.0, confidence=0.9)
    assert stricter.mean_cost >= strict.mean_cost and stricter.losses <= strict.losses
    with pytest.raises(InputError, match="confidence"):
        choose_thresholds(sim, max_accuracy_drop=0.5, confidence=1.0)
    # The split path: searched on one half, certified on the other 300.
    split, _ = choose_thresholds(sim, max_accuracy_drop=2.0, confidence=0.9, path="split")
    assert split.risk["samples"] == 300 and split.risk["accuracy_drop_bound_points"] <= 2.0
    with pytest.raises(InputError, match="path 'best' is not one of scores, split"):
        choose_thresholds(sim, max_accuracy_drop=2.0, path="best")


def test_one_sample_is_refused_and_nothing_is_written(bundle, mnist_split):
    _, (x, y) = mnist_split
    before = snapshot(bundle)
    with pytest.raises(CalibrationError) as e:
        calibrate(bundle, x[:1], y[:1], max_accuracy_drop=1.0, progress=False)
    assert "1 labelled samples at confidence 0.99 can certify an accuracy drop of no less " \
           "than 99 points" in str(e.value) and "needs at least 459 samples" in str(e.value)
    assert snapshot(bundle) == before


def test_no_observed_disagreement_on_few_samples_is_not_certified():
    """Regression: mean + z * standard error was 0 when the chosen exit never disagreed with
    the final exit, at any n; one sample was accepted."""
    from statistics import NormalDist
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20)
    sure = np.where(y[:, None] == np.arange(2), 0.97, 0.03)    # both exits right on all 20
    sim = ExitSimulator([sure, sure], y, MaxSoftmax(), [10, 30], [1, 1])
    early = sim.evaluate([0.9, None])
    assert early.exit_fractions == [1.0, 0.0] and early.losses == 0 and early.drop_se == 0
    old_bound = 1.0 - early.accuracy + NormalDist().inv_cdf(0.9) * early.drop_se
    assert old_bound == 0.0     # what the old rule certified
    # 20 samples at 90% certify no less than 1 - 0.1 ** (1 / 20) = 10.9 points.
    with pytest.raises(CalibrationError, match=r"no less than 10\.9 points.*needs at least 45 samples"):
        choose_thresholds(sim, max_accuracy_drop=5.0, confidence=0.9, refuse=True)
    # Without refuse (callers that only inform): the one certified setting, exits off.
    off, _ = choose_thresholds(sim, max_accuracy_drop=5.0, confidence=0.9)
    assert off.thresholds == [None, None] and off.risk["accuracy_drop_bound_points"] == 0.0
    assert "needs at least 45 samples" in off.risk["uncertifiable"]
    point, _ = choose_thresholds(sim, max_accuracy_drop=15.0, confidence=0.9)
    assert point.thresholds[0] is not None and point.exit_fractions[0] == 1.0
    assert point.risk["accuracy_drop_bound_points"] == pytest.approx(100 * (1 - 0.1 ** (1 / 20)))


def test_cost_objective_reports_the_bound_of_its_point(bundle, mnist_split):
    _, (x, y) = mnist_split
    sim = _sim(load_bundle(bundle), x, y)
    point, _ = choose_thresholds(sim, max_cost_fraction=0.5, confidence=0.9)
    r = point.risk
    assert "not a guarantee" in r["method"] and r["samples"] == len(y)
    assert r["accuracy_drop_bound_points"] >= r["observed_drop_points"]
    assert r["losses"] == point.losses and r["gains"] == point.gains


def test_best_accuracy_under_cost_budget(bundle, mnist_split):
    _, (x, y) = mnist_split
    res = calibrate(bundle, x, y, max_cost_fraction=0.5, progress=False)
    assert res.cost_fraction <= 0.5
    # A larger budget can only keep or improve accuracy.
    res2 = calibrate(bundle, x, y, max_cost_fraction=0.8, progress=False)
    assert res2.point.accuracy >= res.point.accuracy


def test_impossible_budget_names_the_cheapest(bundle, mnist_split):
    _, (x, y) = mnist_split
    before = snapshot(bundle)
    with pytest.raises(CalibrationError, match=r"cheapest achievable is [0-9.e+]+ MACs \(\d+\.\d%\)"):
        calibrate(bundle, x, y, max_cost_fraction=0.01, progress=False)
    assert snapshot(bundle) == before


@pytest.mark.parametrize("labels, kwargs, message", [
    (lambda y: y[:-1], {"max_accuracy_drop": 1}, "inputs but"),
    (lambda y: y + 20, {"max_accuracy_drop": 1}, "labels must be in 0..9"),
    (lambda y: y.astype(np.float32), {"max_accuracy_drop": 1}, "integer array"),
    (lambda y: y, {}, "exactly one objective"),
    (lambda y: y, {"max_accuracy_drop": 1, "max_cost_fraction": 0.5}, "exactly one objective"),
    (lambda y: y, {"max_accuracy_drop": -1}, "0..100"),
    (lambda y: y, {"max_cost_fraction": 1.5}, r"\(0, 1\]"),
])
def test_bad_calibration_input_changes_nothing(bundle, mnist_split, labels, kwargs, message):
    _, (x, y) = mnist_split
    before = snapshot(bundle)
    with pytest.raises(InputError, match=message):
        calibrate(bundle, x, labels(y), progress=False, **kwargs)
    assert snapshot(bundle) == before


def test_policy_switch_is_recorded(bundle, mnist_split):
    _, (x, y) = mnist_split
    res = calibrate(bundle, x, y, max_accuracy_drop=1.0, policy="entropy", progress=False)
    m = read_bundle(bundle).manifest
    assert res.policy == "entropy" and {e["policy"] for e in m["exits"]} == {"entropy"}
    with pytest.raises(UnknownNameError):
        calibrate(bundle, x, y, max_accuracy_drop=1.0, policy="vote", progress=False)


def test_simulator_on_a_hand_made_case():
    # 4 samples, 2 exits; exit 0 is confident on samples 0 and 1 (sample 1 wrongly).
    p0 = np.array([[0.95, 0.05], [0.1, 0.9], [0.6, 0.4], [0.5, 0.5]], np.float32)
    p1 = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], np.float32)
    y = np.array([0, 0, 1, 1])
    sim = ExitSimulator([p0, p1], y, MaxSoftmax(), stage_costs=[10, 30], head_costs=[1, 2])
    assert sim.full_cost == 42
    off = sim.evaluate([None, None])
    assert off.accuracy == 1.0 and off.mean_cost == 42 and off.exit_fractions == [0.0, 1.0]
    on = sim.evaluate([0.9, None])
    # samples 0, 1 leave at exit 0 (cost 11); 2, 3 go on (cost 10 + 1 + 30 + 2 = 43)
    assert on.exit_fractions == [0.5, 0.5] and on.mean_cost == (2 * 11 + 2 * 43) / 4
    assert on.accuracy == 0.75
    point, _ = choose_thresholds(sim, max_accuracy_drop=0, confidence=0)
    assert point.accuracy == 1.0 and point.thresholds[0] is not None and point.mean_cost < 42
    ent = ExitSimulator([p0, p1], y, Entropy(), [10, 30], [1, 2])
    assert ent.evaluate([0.25, None]).exit_fractions == [0.25, 0.75]


def test_simulator_for_uses_manifest_costs(bundle, mnist_split):
    _, (x, y) = mnist_split
    model = load_bundle(bundle)
    sim = simulator_for(model, model.exit_probabilities(x[:50]), y[:50])
    m = json.load(open(os.path.join(bundle, "manifest.json")))
    assert sim.full_cost == sum(s["macs"] for s in m["stages"]) + m["exits"][-1]["macs"]


@pytest.fixture(scope="module")
def gated_bundle(tmp_path_factory, mnist_split):
    """A trained 3-stage net whose residual middle stage has a gate (about half skip at 0.5)."""
    import torch
    from torch import nn
    from models import Head, conv, train_quickly
    from edgesdk.converters import MultiExitModel, convert
    from edgesdk.converters.adaptive_stages import add_gate

    class ResBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1))

        def forward(self, x):
            return torch.relu(x + self.body(x))
    (x, y), (xc, _) = mnist_split
    torch.manual_seed(0)
    net = MultiExitModel([conv(1, 8, 2), ResBlock(8), conv(8, 8, 2)], [Head(8), Head(8), Head(8)])
    net = train_quickly(net, x[:800], y[:800], epochs=1).eval()
    gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        gate[2].weight.normal_(0, 1.0)
        gate[2].bias -= gate(net.stages[0](torch.from_numpy(xc[:200])))[:, 0].median()
    path = str(tmp_path_factory.mktemp("gated") / "gated.edgebundle")
    convert(net, xc[:8], path, preprocessing=PREPROCESSING, progress=False)
    add_gate(path, 1, gate.eval(), xc[:16], threshold=0.5)
    return path


def test_gate_thresholds_are_certified_and_recorded(gated_bundle, mnist_split, tmp_path):
    import shutil
    from edgesdk.converters.adaptive_stages import GATE_PATH, calibrate_gates
    _, (x, y) = mnist_split
    path = str(tmp_path / "g.edgebundle")
    shutil.copytree(gated_bundle, path)
    gate = read_bundle(path).manifest["stages"][1]["gate"]
    assert gate["chosen_from"] == {"method": "given to add_gate (uncalibrated)"}
    out = calibrate_gates(path, x, y, max_accuracy_drop=3.0, confidence=0.9)
    gate = read_bundle(path).manifest["stages"][1]["gate"]
    rec = gate["chosen_from"]
    assert gate["threshold"] in GATE_PATH and out["thresholds"] == {"stage1": gate["threshold"]}
    assert rec["method"] == "calibrate-gates" and rec["data"]["samples"] == len(y)
    r = rec["risk"]
    assert r["samples"] == len(y) and r["confidence"] == 0.9 and "clopper-pearson" in r["method"]
    assert r["accuracy_drop_bound_points"] <= 3.0 and r["settings_certified"] >= 1
    # The runtime with the written threshold does what the record expects.
    model = load_bundle(path)
    got = model.run(x)
    assert np.isclose((got.labels == y).mean(), rec["expected"]["accuracy"])
    assert model.adaptive_stages()[0].skipped / len(y) == pytest.approx(
        rec["expected"]["skipped_fraction"]["stage1"])
    # Too few samples for the target: refused, the bundle unchanged.
    before = snapshot(path)
    with pytest.raises(CalibrationError, match="gate calibration: 20 labelled samples"):
        calibrate_gates(path, x[:20], y[:20], max_accuracy_drop=3.0, confidence=0.9)
    with pytest.raises(InputError, match="most conservative"):
        calibrate_gates(path, x, y, max_accuracy_drop=3.0, path=[0.5, 0.9])
    assert snapshot(path) == before


def test_cli_prints_the_bound_n_confidence_method_and_what_the_cost_is_of(bundle, mnist_split,
                                                                          tmp_path, capsys):
    from edgesdk.cli import main
    _, (x, y) = mnist_split
    data = str(tmp_path / "cal.npz")
    np.savez(data, x=x, y=y)
    assert main(["calibrate", bundle, "--data", data, "--max-accuracy-drop", "2",
                 "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "of the full model's MACs (heads included)" in out
    assert "accuracy drop: at most" in out and "with confidence 0.9" in out
    assert "of 600 samples" in out and "clopper-pearson" in out
    assert main(["calibrate", bundle, "--data", data, "--max-accuracy-drop", "2",
                 "--confidence", "0.9", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["accuracy_drop_bound_points"] <= 2 and rep["bound_samples"] == 600
    assert rep["confidence"] == 0.9 and "clopper-pearson" in rep["method"]
    assert rep["cost_fraction_of"] == "of the full model's MACs (heads included)"
    # A target 600 samples cannot certify: exit code 4 and the smallest certifiable target.
    assert main(["calibrate", bundle, "--data", data, "--max-accuracy-drop", "0.2"]) == 4
    assert "can certify an accuracy drop of no less than 0.765 points" in capsys.readouterr().err


def test_the_simulator_decides_as_the_runtime_at_a_float32_score(bundle, mnist_split):
    """A threshold between a float32 score and the next float64 up rounds to that score in
    float32, where the runtime compares: the simulator replays the policy's own decision."""
    _, (x, y) = mnist_split
    model = load_bundle(bundle)
    probs = model.exit_probabilities(x[:200])
    sim = simulator_for(model, probs, y[:200])
    s = np.sort(MaxSoftmax().score(probs[0]))[100]
    t = float(np.nextafter(np.float64(s), 2.0))   # above s in float64, s in float32
    assert t > float(s) and np.float32(t) == s
    runtime = model.run(x[:200], thresholds=[t, None, None]).exit_counts()
    assert runtime[0] >= 100   # the median sample's own score exits, as in float32
    assert [round(f * 200) for f in sim.evaluate([t, None, None]).exit_fractions] == \
        runtime.tolist()
