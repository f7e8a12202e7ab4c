"""The CLI in-process: convert -> inspect -> validate -> calibrate -> run, and exit codes."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import cli, snapshot
from edgesdk.cli import main

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(HERE, "models.py") + ":TinyNet"


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_tiny, mnist_split):
    """Weights and .npz data files as a user would have them."""
    d = tmp_path_factory.mktemp("cli")
    torch.save(trained_tiny.state_dict(), str(d / "w.pt"))
    _, (x, y) = mnist_split
    raw = np.clip(x[:, 0] * 0.3081 + 0.1307, 0, 1) * 255.0
    np.savez(str(d / "cal.npz"), x=np.round(raw).astype(np.uint8), y=y)
    np.savez(str(d / "few.npz"), x=x[:5], y=y[:5])
    return d


def test_end_to_end(files, tmp_path, capsys):
    b = tmp_path / "tiny.edgebundle"
    code, out, _ = cli(capsys, "convert", "--model", MODEL, "--weights", files / "w.pt",
                       "--stages-attr", "blocks", "--heads-attr", "exits",
                       "--example-data", files / "cal.npz", "--mean", "0.1307", "--std", "0.3081",
                       "-o", b, "--json")
    assert code == 0
    rep = json.loads(out)
    assert len(rep["max_abs_error"]) == 3 and max(rep["max_abs_error"]) < 1e-4

    code, out, _ = cli(capsys, "inspect", b)
    assert code == 0
    for word in ("stage0", "exit2", "max-softmax", "always", "uncalibrated", "sha256"):
        assert word in out
    code, out, _ = cli(capsys, "inspect", b, "--json")
    assert json.loads(out)["name"] == "tiny"

    code, out, _ = cli(capsys, "validate", b, "--check")
    assert code == 0 and "passed" in out

    code, out, _ = cli(capsys, "calibrate", b, "--data", files / "cal.npz",
                       "--max-accuracy-drop", "1", "--json")
    assert code == 0
    cal = json.loads(out)
    assert cal["mean_cost_fraction"] < 1 and cal["accuracy"] >= cal["final_exit_accuracy"] - 0.01

    code, out, _ = cli(capsys, "run", b, files / "cal.npz", "--batch-size", "32", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["summary"]["samples"] == 600
    # Same data, same thresholds: the same accuracy, up to the samples whose score lies
    # within float error of a threshold (run computes later exits on compacted batches).
    near = _near_thresholds(b, files / "cal.npz", cal["thresholds"])
    assert abs(res["summary"]["accuracy"] - cal["accuracy"]) <= near / 600.0 + 1e-9, near
    assert res["summary"]["exit_counts"][0] > 0
    assert res["samples"][0].keys() >= {"label", "exit", "confidence", "true_label", "class"} - {"class"}

    code, out, _ = cli(capsys, "run", b, files / "few.npz", "--no-early-exit")
    assert code == 0 and "exit 2" in out and "accuracy" in out and "true_label" in out

    code, out, _ = cli(capsys, "run", b, files / "few.npz", "--thresholds", "0.0,none,none", "--json")
    assert json.loads(out)["summary"]["exit_counts"] == [5, 0, 0]


def _near_thresholds(bundle, data, thresholds, eps=1e-5):
    """How many samples of ``data`` have an exit score within ``eps`` of that exit's
    threshold: the decisions float error may flip."""
    from edgesdk.runtime import load_bundle
    from edgesdk.runtime.datafiles import load_inputs
    model = load_bundle(str(bundle))
    x = load_inputs(str(data), model.input_spec)[0]
    near = np.zeros(len(x), dtype=bool)
    for policy, p, t in zip(model.policies, model.exit_probabilities(x), thresholds):
        if t is not None:
            near |= np.abs(policy.score(p) - t) < eps
    return int(near.sum())


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_user_errors_exit_4_with_message(tmp_path, files, bundle, capsys):
    code, _, err = cli(capsys, "run", tmp_path / "missing.edgebundle", files / "few.npz")
    assert code == 4 and "edgesdk run: error:" in err and "not a bundle directory" in err
    code, _, err = cli(capsys, "run", bundle, files / "few.npz", "--thresholds", "0.5")
    assert code == 4 and "expected 3 thresholds" in err
    code, _, err = cli(capsys, "run", bundle, files / "few.npz", "--memory-limit-mb", "0.01")
    assert code == 4 and "this bundle needs about" in err and "of the limit given" in err
    before = snapshot(bundle)
    code, _, err = cli(capsys, "calibrate", bundle, "--data", files / "few.npz",
                       "--max-cost-fraction", "0.0001")
    assert code == 4 and "cheapest achievable" in err
    assert snapshot(bundle) == before
    code, _, err = cli(capsys, "convert", "--model", "nosuchmodule:Net", "--input-shape", "1,28,28",
                       "--random-weights", "-o", tmp_path / "x.edgebundle")
    assert code == 4 and "cannot import 'nosuchmodule'" in err
    code, _, err = cli(capsys, "convert", "--model", MODEL, "--input-shape", "1,28,28",
                       "--random-weights", "-o", tmp_path / "x.edgebundle")
    assert code == 4 and "--stages-attr" in err
    assert not (tmp_path / "x.edgebundle").exists()


def test_tampered_bundle_fails_validate(bundle, capsys):
    with open(os.path.join(bundle, "heads", "exit0.onnx"), "ab") as f:
        f.write(b"\0")
    code, _, err = cli(capsys, "validate", bundle)
    assert code == 4 and "heads/exit0.onnx" in err


def test_missing_dependency_exits_5(bundle, tmp_path, capsys, monkeypatch):
    (tmp_path / "imgs").mkdir()
    monkeypatch.setitem(sys.modules, "PIL", None)   # makes `import PIL.Image` fail
    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)
    code, _, err = cli(capsys, "run", bundle, tmp_path / "imgs")
    assert code == 5 and "pip install 'edgesdk[images]'" in err


def test_internal_errors_exit_70_without_a_traceback(capsys, monkeypatch):
    import edgesdk.cli.targets as verb

    def broken(args):
        return {}["missing"]
    monkeypatch.setattr(verb, "run", broken)
    code, _, err = cli(capsys, "targets")
    assert code == 70 and "edgesdk targets: internal error" in err
    assert "KeyError: 'missing' at test_cli.py:" in err and "Traceback" not in err
    code, _, err = cli(capsys, "--verbose", "targets")
    assert code == 70 and "Traceback (most recent call last)" in err


def test_a_closed_pipe_ends_a_verb_quietly(bundle):
    import subprocess
    edgesdk = os.path.join(os.path.dirname(sys.executable), "edgesdk")
    # `edgesdk inspect B | head -1` once head has exited: stdout is a pipe nobody reads.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([edgesdk, "inspect", str(bundle)], stdout=write_end,
                              stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert done.returncode == 141 and done.stderr.decode() == ""


def test_device_runtime_reports_internal_errors(bundle, files, capsys, monkeypatch):
    from edgesdk.runtime import cli as device_cli
    from edgesdk.runtime.cli import validate

    def broken(args):
        raise AssertionError("an invariant broke")
    monkeypatch.setattr(validate, "run", broken)
    assert device_cli.main(["validate", str(bundle)]) == 70
    err = capsys.readouterr().err
    assert "edgesdk-runtime validate: internal error" in err and "an invariant broke" in err


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for verb in ("convert", "calibrate", "run", "inspect", "validate", "pack-runtime"):
        assert verb in out


def test_feedback_loop_convert_profile_convert(files, tmp_path, capsys):
    """convert with INT8 builds -> profile on this machine -> convert --profile DB."""
    common = ["--model", MODEL, "--weights", files / "w.pt", "--stages-attr", "blocks",
              "--heads-attr", "exits", "--example-data", files / "cal.npz", "--mean", "0.1307",
              "--std", "0.3081", "--precisions", "fp32,int8"]
    first, db = tmp_path / "a.edgebundle", tmp_path / "p.sqlite"
    code, out, err = cli(capsys, "convert", *common, "-o", first)
    assert code == 0, err
    assert "int8 build, top-1 agreement with fp32" in out
    code, out, _ = cli(capsys, "profile", first, "--db", db, "--repeats", "5", "--warmup", "1", "--json")
    assert code == 0
    assert {r["precision"] for r in json.loads(out)["graphs"]} == {"fp32", "int8", "-"}
    second = tmp_path / "b.edgebundle"
    code, out, _ = cli(capsys, "convert", *common, "--profile", db, "--min-agreement", "0.9",
                       "-o", second, "--json")
    assert code == 0
    choices = json.loads(out)["choices"]
    assert set(choices["builds"]) == {"stage0", "stage1", "stage2", "exit0", "exit1", "exit2"}
    manifest = json.loads((second / "manifest.json").read_text())
    for e in manifest["stages"] + manifest["exits"]:
        costs = e["build_chosen_from"]["costs"]
        assert set(costs) == {"onnx fp32", "onnx int8"} and all(v > 0 for v in costs.values())
        assert e["build_chosen_from"]["chosen"] == choices["builds"][e["id"]]
    # The calibrated budget then comes from the same table: the graphs did not change.
    code, out, err = cli(capsys, "calibrate", second, "--data", files / "cal.npz", "--profile", db,
                         "--budget-latency-ms", "1000", "--json")
    assert code == 0, err
    code, _, err = cli(capsys, "convert", *common, "--profile", tmp_path / "none.sqlite",
                       "-o", tmp_path / "c.edgebundle")
    assert code == 4 and "does not exist" in err and not (tmp_path / "c.edgebundle").exists()


def test_printers_escape_control_characters_from_the_bundle(bundle, files, tmp_path, capsys):
    import shutil
    from edgesdk.bundle import seal_manifest
    evil = str(tmp_path / "evil.edgebundle")
    shutil.copytree(bundle, evil)
    path = os.path.join(evil, "manifest.json")
    with open(path) as f:
        m = json.load(f)
    spoof = "\x1b[2K\rmanifest sha256 " + "0" * 64 + "\n"
    m["name"] = "demo" + spoof
    m["class_names"] = ["c{}\x1b[8m\u202e".format(i) for i in range(m["num_classes"])]
    with open(path, "w") as f:
        json.dump(seal_manifest(m), f)
    code, out, _ = cli(capsys, "inspect", evil)
    assert code == 0 and "\x1b" not in out and "\u202e" not in out and "\r" not in out
    assert "demo\\x1b[2K\\x0dmanifest sha256 " in out
    code, out, _ = cli(capsys, "run", evil, files / "few.npz")
    assert code == 0 and "\x1b" not in out and "\\x1b[8m\\u202e" in out
