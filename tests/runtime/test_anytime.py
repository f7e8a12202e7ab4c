"""Bounded runs: a compute budget shared by a batch, a deadline shorter than the cheapest exit,
a cap on the deepest exit, and stage costs read from a profile store."""
import numpy as np
import pytest

from edgesdk.errors import InputError
from edgesdk.profiles import ProfileStoreError
from edgesdk.runtime.anytime import StageCosts
from edgesdk.runtime.engine import load_bundle
from edgesdk.runtime.policies import softmax
from margins import exit_thresholds

NO_EXITS = [None, None, None]  # no early stop: only the bounds end a sample's run


def test_a_budget_sends_the_least_confident_samples_deeper(bundle, mnist_split):
    _, (xc, _) = mnist_split
    x = xc[:10]
    model = load_bundle(bundle)
    model.costs = StageCosts([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    # 10 ms pays exit 0 for all ten samples, the next 5 ms exit 1 for five of them.
    got = model.run(x, thresholds=NO_EXITS, budget_ms=15.0)
    assert got.exit_counts().tolist() == [5, 5, 0]
    confidence0 = softmax(model.exit_logits(x)[0]).max(axis=1)
    deeper = np.flatnonzero(got.exit_index == 1)
    assert set(deeper) == set(np.argsort(confidence0)[:5])   # the least confident five
    # Each sample's answer is the deepest exit it reached.
    logits = model.exit_logits(x)
    for i in range(len(x)):
        np.testing.assert_allclose(got.probabilities[i], softmax(logits[got.exit_index[i]])[i],
                                   atol=1e-6)
    assert any("stopped at exit 0" in n for n in got.notes)
    # A budget for everything runs everything.
    full = model.run(x, thresholds=NO_EXITS, budget_ms=30.0)
    assert full.exit_counts().tolist() == [0, 0, 10] and full.notes == []


def test_confident_samples_still_leave_early_under_a_budget(bundle, mnist_split):
    _, (xc, _) = mnist_split
    model = load_bundle(bundle)
    model.costs = StageCosts([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    thr = exit_thresholds(model, xc[:50], 0.5)  # the bounded path runs other batch shapes
    free = model.run(xc[:50], thresholds=thr)
    bounded = model.run(xc[:50], thresholds=thr, budget_ms=1000.0)
    np.testing.assert_array_equal(free.exit_index, bounded.exit_index)
    np.testing.assert_array_equal(free.labels, bounded.labels)


def test_a_deadline_shorter_than_the_cheapest_exit_returns_exit_0_and_says_so(bundle, mnist_split):
    _, (xc, _) = mnist_split
    model = load_bundle(bundle)
    model.costs = StageCosts([1.0, 1.0, 1.0], [0.5, 0.5, 0.5])
    got = model.run(xc[:4], thresholds=NO_EXITS, deadline_ms=0.01)
    assert got.exit_counts().tolist() == [4, 0, 0]
    assert "shorter than the cheapest exit (6 ms predicted for 4 sample(s))" in got.notes[0]
    one = model.run_one(xc[0], deadline_ms=0.01)
    assert one.exit_index == 0


def test_max_exit_caps_every_sample(bundle, mnist_split):
    _, (xc, _) = mnist_split
    model = load_bundle(bundle)   # no costs needed for a cap alone
    got = model.run(xc[:20], thresholds=NO_EXITS, max_exit=1)
    assert got.exit_counts().tolist() == [0, 20, 0]
    np.testing.assert_allclose(got.probabilities, softmax(model.exit_logits(xc[:20])[1]),
                               atol=1e-6)


def test_stage_costs_come_from_the_profile_store(bundle, tmp_path):
    from edgesdk.profiles import ProfileStore
    from edgesdk.runtime.profiler import profile_bundle
    db = str(tmp_path / "profiles.sqlite")
    model = load_bundle(bundle)
    with pytest.raises(ProfileStoreError, match="holds no measurements yet"):
        ProfileStore(db).close()
        model.use_profile(db)
    profile_bundle(bundle, [1], warmup=1, repeats=3, db=db, progress=False, no_sensor=True)
    costs = model.use_profile(db)
    with ProfileStore(db, create=False) as store:
        p99 = {r["graph"]: r["value"] for r in store.rows(metric="p99_ms", batch=1)}
    assert costs.stage_ms == [p99["stage0"], p99["stage1"], p99["stage2"]]
    assert costs.head_ms == [p99["exit0"], p99["exit1"], p99["exit2"]]
    assert costs.runtime_ms == p99["runtime"] and "p99_ms" in costs.source


def test_bad_bounds_are_refused(bundle, mnist_split):
    _, (xc, _) = mnist_split
    model = load_bundle(bundle)
    with pytest.raises(InputError, match="needs the stages' predicted costs"):
        model.run(xc[:2], deadline_ms=5.0)
    model.costs = StageCosts([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    for kwargs, match in (({"deadline_ms": 5.0, "budget_ms": 5.0}, "not both"),
                          ({"deadline_ms": -1.0}, "positive number"),
                          ({"budget_ms": float("nan")}, "positive number"),
                          ({"max_exit": 3}, r"exit index in 0\.\.2"),
                          ({"max_exit": True}, "exit index")):
        with pytest.raises(InputError, match=match):
            model.run(xc[:2], **kwargs)
    with pytest.raises(InputError, match="one finite non-negative value"):
        StageCosts([1.0, -1.0], [0.0, 0.0])
