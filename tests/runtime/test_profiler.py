"""The on-device profiler: per-graph latency rows, energy with a sensor, end-to-end exits."""
import json

import pytest

from edgesdk.cli import main
from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.profiler import profile_end_to_end, profile_graphs
from edgesdk.runtime.timing import latency_stats, trimmed_mean


@pytest.fixture(scope="module")
def model(bundle_master):
    return load_bundle(bundle_master)


class ConstantPower(object):
    kind, wrap_j, rail, name, total = "power", None, "VDD_IN", "fake", True

    def read(self):
        return 3.0

    def describe(self):
        return {"sensor": self.name, "rail": self.rail}


ENGINE = ("runtime-call", "runtime", "runtime-head", "runtime-final")
QUICK = {"warmup_s": 0, "min_seconds": 0}  # count floors only: fast and exact repeat counts


def test_rows_for_every_graph_and_batch(model):
    rows = profile_graphs(model, batch_sizes=[1, 4], warmup=1, repeats=5, **QUICK)
    assert [(r["graph"], r["batch"]) for r in rows] == [
        (g, b) for b in (1, 4)
        for g in ("stage0", "exit0", "stage1", "exit1", "stage2", "exit2") + ENGINE]
    engine = [r for r in rows if r["kind"] == "runtime"]
    assert all(r["build"] == "python" and r["repeats"] == 5 for r in engine)
    rows = [r for r in rows if r["kind"] != "runtime"]
    macs = {e["id"]: e["macs"] for e in model.bundle.manifest["stages"] + model.bundle.manifest["exits"]}
    # 4 kinds of run a round (leave at exit 0, 1, 2; final head only), 5 rounds: stage k runs
    # in the kinds reaching it, head k in those that run it.
    calls = {"stage0": 20, "exit0": 15, "stage1": 15, "exit1": 10, "stage2": 10, "exit2": 10}
    for r in rows:
        assert 0 < r["min_ms"] <= r["p10_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["min_ms"] <= r["trimmed_mean_ms"] and r["repeats"] == calls[r["graph"]]
        assert r["spread"] == pytest.approx(r["p90_ms"] / r["p50_ms"])
        assert r["noisy"] == (r["spread"] > 1.5)
        assert r["energy_mj"] is None and r["energy_status"] == "no sensor" and r["idle_power_w"] is None
        assert r["macs"] == macs[r["graph"]] and r["peak_rss_mb"] > 0


def test_the_engine_rows_are_positive_and_recorded(model, tmp_path):
    from edgesdk.profiles import PROFILE_METRICS, ProfileRecorder, ProfileStore
    db = str(tmp_path / "p.sqlite")
    recorder = ProfileRecorder(db, model.bundle.manifest)
    rows = profile_graphs(model, [1], warmup=2, repeats=30, progress=recorder, **QUICK)
    recorder.close()
    engine = {r["graph"]: r for r in rows if r["kind"] == "runtime"}
    # Every call checks its input and assembles a result; every stage step and head has work
    # of its own (softmax, the exit decision): the engine's share is above zero.
    assert engine["runtime-call"]["p50_ms"] > 0
    assert engine["runtime"]["p50_ms"] + engine["runtime-head"]["p50_ms"] > 0
    assert all(r["p50_ms"] >= 0 for r in engine.values())
    with ProfileStore(db, create=False) as store:
        stored = store.rows(graph="runtime")
    assert {r["metric"] for r in stored} == set(PROFILE_METRICS)
    assert {r["metric"]: r["value"] for r in stored}["p50_ms"] == engine["runtime"]["p50_ms"]


def test_the_fit_separates_call_stage_and_head_costs():
    from edgesdk.runtime.policies import get_policy
    from edgesdk.runtime.timing import TERMS, fit_engine, run_kinds
    class Three(object):
        num_exits = 3
        policies = [get_policy("max-softmax")] * 3
    kinds = run_kinds(Three())
    assert [(k[0], k[2]) for k in kinds] == [
        ("exit0", (1, 1, 1, 0)), ("exit1", (1, 2, 2, 0)), ("exit2", (1, 3, 2, 1)),
        ("final-head-only", (1, 3, 0, 1))]
    assert kinds[0][1] == [-float("inf"), float("inf"), None]    # leave at exit 0
    truth = {"call": 0.05, "stage": 0.002, "head": 0.01, "final": 0.004}
    exact = {k[0]: sum(truth[t] * c for t, c in zip(TERMS, k[2])) for k in kinds}
    assert fit_engine(exact, kinds) == pytest.approx(truth)
    # A term fitted below zero is dropped and the rest fitted again.
    no_stage = dict(exact, exit1=exact["exit1"] - 0.004)
    fitted = fit_engine(no_stage, kinds)
    assert min(fitted.values()) >= 0 and 0.0 in fitted.values()
    assert fit_engine({"exit0": 0.3}, [("exit0", None, (1, 1, 0, 1))]) == {
        "call": 0.3, "stage": 0.0, "head": 0.0, "final": 0.0}


def test_energy_with_a_sensor(model):
    rows = profile_graphs(model, batch_sizes=[2], warmup=1, repeats=3, sensor=ConstantPower(),
                          min_window_s=0.02, **QUICK)
    for r in rows[:-len(ENGINE)]:
        assert r["energy_status"] == "ok" and r["idle_power_w"] == pytest.approx(3.0)
        # 3 W over each call's share of the window: positive and finite. How long a call
        # takes on a loaded machine is not asserted (the meter's arithmetic is tested with
        # exact sensor readings in test_power.py).
        assert 0 < r["energy_mj"] < float("inf")


def test_end_to_end_records_each_sample_exit(model, mnist_split):
    _, (x, y) = mnist_split
    e2e = profile_end_to_end(model, x[:50], y[:50])
    direct = model.run(x[:50])
    assert e2e["exit_index"] == direct.exit_index.tolist()
    assert sum(e2e["exit_counts"]) == 50 and e2e["accuracy"] == float((direct.labels == y[:50]).mean())
    assert e2e["energy_mj_per_sample"] is None and e2e["energy_status"] == "no sensor"


def test_the_rounds_follow_a_workload_mix(model, mnist_split):
    import numpy as np
    from edgesdk.runtime.profiler import exit_mix
    from edgesdk.runtime.timing import MIX_ROUND, round_schedule, run_kinds
    kinds = run_kinds(model)          # exit0..exit2, final-head-only
    assert round_schedule(kinds) == [0, 1, 2, 3]
    # MIX_ROUND calls in proportion, then one of each kind the mix left out (the last kind
    # is never part of a workload); shuffled with an rng.
    grouped = round_schedule(kinds, [0.85, 0.15, 0.0])
    assert grouped == [0] * 34 + [1] * 6 + [2, 3] and MIX_ROUND == 40
    shuffled = round_schedule(kinds, [0.85, 0.15, 0.0], np.random.RandomState(1))
    assert sorted(shuffled[:40]) == grouped[:40] and shuffled[:40] != grouped[:40]
    assert shuffled[40:] == [2, 3]
    for bad in ([0.5, 0.5], [0, 0, 0], [-1, 1, 1]):
        with pytest.raises(InputError, match="one non-negative share per exit"):
            round_schedule(kinds, bad)
    _, (x, _) = mnist_split
    counts = model.run(x[:60]).exit_counts()
    assert exit_mix(model, x[:60]) == pytest.approx((counts / 60.0).tolist())
    # Rounds of 20 exit-0 runs, 10 exit-1, 10 exit-2 and 1 final-head-only: stage 0 runs in
    # all 41, head 0 in all but the last kind, stage 2 in the last two kinds.
    rows = profile_graphs(model, [1], warmup=1, repeats=4, mix=[0.5, 0.25, 0.25], **QUICK)
    calls = {r["graph"]: r["repeats"] for r in rows if r["kind"] != "runtime"}
    names = [s["id"] for s in model.bundle.manifest["stages"]]
    heads = [e["id"] for e in model.bundle.manifest["exits"]]
    assert (calls[names[0]], calls[heads[0]], calls[names[2]], calls[heads[2]]) == (
        4 * 41, 4 * 40, 4 * 11, 4 * 11)


def test_stats_and_bad_arguments(model):
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert s["mean_ms"] == 2.5 and s["p50_ms"] == 2.5 and s["min_ms"] == 1.0
    with pytest.raises(InputError):
        profile_graphs(model, batch_sizes=[0])
    with pytest.raises(InputError):
        profile_graphs(model, repeats=0)
    with pytest.raises(InputError, match="min_seconds >= 0"):
        profile_graphs(model, min_seconds=float("nan"))


def test_robust_statistics_of_timings_with_a_spike():
    # 19 calls of 1 ms and one scheduler spike of 100 ms.
    s = latency_stats([1.0] * 19 + [100.0])
    assert s["mean_ms"] == pytest.approx(5.95)          # the spike dominates the mean
    assert s["trimmed_mean_ms"] == 1.0                  # 2 of 20 dropped at each end
    assert s["p50_ms"] == 1.0 and s["p10_ms"] == 1.0 and s["spread"] == 1.0
    assert not s["noisy"] and s["repeats"] == 20        # p90 is still 1 ms
    wide = latency_stats([1.0] * 8 + [100.0, 100.0])    # p90 = 100 ms: flagged
    assert wide["spread"] == pytest.approx(100.0) and wide["noisy"]
    assert wide["trimmed_mean_ms"] == pytest.approx((7 * 1.0 + 100.0) / 8)
    assert trimmed_mean([5.0, 1.0, 3.0]) == 3.0         # under 10 calls nothing is dropped
    assert trimmed_mean(list(range(30))) == pytest.approx(14.5)  # 3 dropped each end, not 2


def test_cli_profile_json_and_sensor_listing(bundle_master, capsys):
    assert main(["profile", bundle_master, "--repeats", "3", "--warmup", "1", "--json",
                 "--batch-sizes", "1,2", "--min-seconds", "0", "--warmup-seconds", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["graphs"]) == 2 * 10 and out["bundle"].endswith("tiny.edgebundle")
    assert all(r["repeats"] == 3 for r in out["graphs"] if r["kind"] == "runtime")
    assert main(["profile", "--list-sensors", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["sensors"], list)
    assert main(["profile"]) == 4
    assert "--list-sensors" in capsys.readouterr().err
    assert main(["profile", bundle_master, "--batch-sizes", "one"]) == 4


def test_cli_profile_into_a_database_and_profiles_verbs(bundle_master, tmp_path, capsys):
    from edgesdk.profiles import PROFILE_METRICS
    db, csv_path, db2 = (str(tmp_path / n) for n in ("p.sqlite", "p.csv", "q.sqlite"))
    assert main(["profile", bundle_master, "--repeats", "2", "--warmup", "0", "--db", db,
                 "--min-seconds", "0", "--warmup-seconds", "0", "--json"]) == 0
    capsys.readouterr()
    assert main(["profiles", "show", db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    graphs = {r["graph"] for r in shown["rows"]}
    assert graphs == {"stage0", "stage1", "stage2", "exit0", "exit1", "exit2"} | set(ENGINE)
    n = 10 * len(PROFILE_METRICS)
    assert len(shown["rows"]) == n and len(shown["devices"]) == 1
    noisy = [r for r in shown["rows"] if r["metric"] == "noisy"]
    assert len(noisy) == 10 and all(r["value"] in (0.0, 1.0) for r in noisy)
    energy = [r for r in shown["rows"] if r["metric"] == "energy_mj"]
    assert all(r["value"] is None and r["sensor"] == "none" for r in energy)
    assert main(["profiles", "export", db, csv_path]) == 0
    assert main(["profiles", "import", db2, csv_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["imported"] == n
    assert main(["profiles", "export", db]) == 4
