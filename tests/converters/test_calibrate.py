"""Threshold calibration: the simulator matches the runtime, objectives hold, errors are clear."""
import json
import os

import numpy as np
import pytest

from conftest import snapshot
from edgesdk.bundle import read_bundle
from edgesdk.converters import ExitSimulator, calibrate, choose_thresholds, simulator_for
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


def test_confidence_bound_holds_and_costs_more_than_point_estimates(bundle, mnist_split):
    from statistics import NormalDist
    _, (x, y) = mnist_split
    model = load_bundle(bundle)
    sim = simulator_for(model, model.exit_probabilities(x), y)
    final = sim.evaluate([None] * sim.k).accuracy
    loose, _ = choose_thresholds(sim, max_accuracy_drop=0.5, confidence=0)
    strict, obj = choose_thresholds(sim, max_accuracy_drop=0.5, confidence=0.99)
    assert final - loose.accuracy <= 0.005 + 1e-12
    assert final - strict.accuracy + NormalDist().inv_cdf(0.99) * strict.drop_se <= 0.005 + 1e-12
    assert strict.drop_se > 0 and strict.mean_cost >= loose.mean_cost
    assert obj["confidence"] == 0.99
    with pytest.raises(InputError, match="confidence"):
        choose_thresholds(sim, max_accuracy_drop=0.5, confidence=1.0)


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
