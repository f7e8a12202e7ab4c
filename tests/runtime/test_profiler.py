"""The on-device profiler: per-graph latency rows, energy with a sensor, end-to-end exits."""
import json

import pytest

from edgesdk.cli import main
from edgesdk.errors import InputError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.profiler import latency_stats, profile_end_to_end, profile_graphs


@pytest.fixture(scope="module")
def model(bundle_master):
    return load_bundle(bundle_master)


class ConstantPower(object):
    kind, wrap_j, rail, name, total = "power", None, "VDD_IN", "fake", True

    def read(self):
        return 3.0

    def describe(self):
        return {"sensor": self.name, "rail": self.rail}


def test_rows_for_every_graph_and_batch(model):
    rows = profile_graphs(model, batch_sizes=[1, 4], warmup=1, repeats=5)
    assert [(r["graph"], r["batch"]) for r in rows] == [
        (g, b) for b in (1, 4)
        for g in ("stage0", "exit0", "stage1", "exit1", "stage2", "exit2", "runtime")]
    overhead = [r for r in rows if r["graph"] == "runtime"]
    assert all(r["mean_ms"] >= 0 and r["build"] == "python" for r in overhead)
    rows = [r for r in rows if r["graph"] != "runtime"]
    macs = {e["id"]: e["macs"] for e in model.bundle.manifest["stages"] + model.bundle.manifest["exits"]}
    for r in rows:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["repeats"] == 5
        assert r["energy_mj"] is None and r["energy_status"] == "no sensor" and r["idle_power_w"] is None
        assert r["macs"] == macs[r["graph"]] and r["peak_rss_mb"] > 0


def test_energy_with_a_sensor(model):
    rows = profile_graphs(model, batch_sizes=[2], warmup=1, repeats=3, sensor=ConstantPower(),
                          min_window_s=0.02)
    for r in rows[:-1]:
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


def test_stats_and_bad_arguments(model):
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert s["mean_ms"] == 2.5 and s["p50_ms"] == 2.5 and s["min_ms"] == 1.0
    with pytest.raises(InputError):
        profile_graphs(model, batch_sizes=[0])
    with pytest.raises(InputError):
        profile_graphs(model, repeats=0)


def test_cli_profile_json_and_sensor_listing(bundle_master, capsys):
    assert main(["profile", bundle_master, "--repeats", "3", "--warmup", "1", "--json",
                 "--batch-sizes", "1,2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["graphs"]) == 14 and out["bundle"].endswith("tiny.edgebundle")
    assert main(["profile", "--list-sensors", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["sensors"], list)
    assert main(["profile"]) == 4
    assert "--list-sensors" in capsys.readouterr().err
    assert main(["profile", bundle_master, "--batch-sizes", "one"]) == 4


def test_cli_profile_into_a_database_and_profiles_verbs(bundle_master, tmp_path, capsys):
    db, csv_path, db2 = (str(tmp_path / n) for n in ("p.sqlite", "p.csv", "q.sqlite"))
    assert main(["profile", bundle_master, "--repeats", "2", "--warmup", "0", "--db", db, "--json"]) == 0
    capsys.readouterr()
    assert main(["profiles", "show", db, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    graphs = {r["graph"] for r in shown["rows"]}
    assert graphs == {"stage0", "stage1", "stage2", "exit0", "exit1", "exit2", "runtime"}
    assert len(shown["rows"]) == 7 * 7 and len(shown["devices"]) == 1
    energy = [r for r in shown["rows"] if r["metric"] == "energy_mj"]
    assert all(r["value"] is None and r["sensor"] == "none" for r in energy)
    assert main(["profiles", "export", db, csv_path]) == 0
    assert main(["profiles", "import", db2, csv_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["imported"] == 49
    assert main(["profiles", "export", db]) == 4
