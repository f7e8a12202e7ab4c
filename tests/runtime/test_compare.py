"""`edgesdk compare`: builds of one bundle (or two bundles) on the same inputs, every stage's
outputs and every exit's logits, with tolerances, top-1 agreement, saved outputs and exit codes
0 (match) / 1 (mismatch)."""
import json
import shutil

import numpy as np
import pytest

from conftest import cli
from edgesdk.runtime import load_bundle
from edgesdk.runtime.compare import (compare_tensors, generated_inputs, graph_summary,
                                     load_outputs, outputs_of)


@pytest.fixture(scope="module")
def data(mnist_split, tmp_path_factory):
    _, (x, y) = mnist_split
    path = tmp_path_factory.mktemp("compare") / "few.npz"
    np.savez(str(path), x=x[:20], y=y[:20])
    return x[:20], str(path)


def test_outputs_are_every_stage_tensor_and_every_exit_logits(bundle_master, data):
    model = load_bundle(bundle_master)
    out = outputs_of(model, data[0], batch_size=7)
    assert list(out) == ["stage0/s0_0", "exit0/logits", "stage1/s1_0", "exit1/logits",
                         "stage2/s2_0", "exit2/logits"]
    for got, want in zip([out["exit0/logits"], out["exit1/logits"], out["exit2/logits"]],
                         model.exit_logits(data[0])):
        np.testing.assert_array_equal(got, want)


def test_compare_tensors_reports_the_worst_errors_and_the_first_failing_tensor():
    ref = {"stage0/a": np.zeros((4, 3), np.float32), "exit0/logits": np.eye(4, 3, dtype=np.float32)}
    near = {"stage0/a": np.full((4, 3), 5e-5, np.float32), "exit0/logits": ref["exit0/logits"]}
    rows = compare_tensors(ref, near, atol=1e-4, rtol=0)
    assert all(r["passed"] for r in rows) and rows[0]["max_abs"] == pytest.approx(5e-5)
    assert rows[1]["top1_agreement"] == 1.0
    bad = {"stage0/a": ref["stage0/a"], "exit0/logits": ref["exit0/logits"][:, ::-1].copy()}
    bad["exit0/logits"][0, 0] = np.nan
    rows = compare_tensors(ref, bad)
    assert [r["passed"] for r in rows] == [True, False] and rows[1]["non_finite"] == 1
    assert rows[1]["max_abs"] is None          # not finite: reported as such, not as a number
    assert graph_summary(rows)[1]["first_failing"] == "exit0/logits"
    rows = compare_tensors(ref, {"stage0/a": np.zeros((2, 3), np.float32)})
    assert [r.get("problem") for r in rows] == ["shape [2, 3] against [4, 3]", "missing"]


def test_generated_inputs_follow_the_recorded_statistics(bundle_master):
    spec = load_bundle(bundle_master).input_spec
    x = generated_inputs(spec, 500, seed=3)
    assert x.shape == (500, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(), spec["statistics"]["mean"][0], atol=0.02)
    np.testing.assert_allclose(x.std(), spec["statistics"]["std"][0], rtol=0.02)
    np.testing.assert_array_equal(x, generated_inputs(spec, 500, seed=3))


def test_cli_compares_builds_of_one_bundle_and_exits_1_on_a_mismatch(tx2_master, data, capsys):
    code, out, err = cli(capsys, "compare", tx2_master, "--builds", "onnx:fp32", "--builds",
                         "onnx:fp16", "--data", data[1], "--atol", "0.05", "--rtol", "0.05")
    assert code == 0, err
    assert "reference: " in out and "passed" in out and "exit2" in out and "100.00%" in out
    code, out, err = cli(capsys, "compare", tx2_master, "--builds", "onnx:fp32", "--builds",
                         "int8", "--data", data[1], "--atol", "1e-6", "--rtol", "0", "--json")
    assert code == 1 and "outputs differ" in err
    res = json.loads(out)["results"][0]
    assert not res["passed"] and res["tensors"][0]["tensor"] == "stage0/s0_0"
    assert {b["precision"] for b in res["builds"].values()} == {"int8"}
    first = next(g for g in res["graphs"] if not g["passed"])
    assert first["graph"] == "stage0" and first["first_failing"] == "stage0/s0_0"
    assert 0.5 <= res["graphs"][1]["top1_agreement"] <= 1.0


def test_outputs_saved_on_one_machine_are_compared_on_another(bundle_master, tmp_path, capsys):
    saved = str(tmp_path / "board.npz")
    code, out, err = cli(capsys, "compare", bundle_master, "--samples", "5", "--seed", "1",
                         "--save-outputs", saved)
    assert code == 0, err and "saved to" in out
    outputs, x, about = load_outputs(saved)
    assert x.shape == (5, 1, 28, 28) and len(outputs) == 6
    assert about["builds"] == ["onnx fp32"] and about["bundle"] == "tiny.edgebundle"
    code, out, err = cli(capsys, "compare", bundle_master, "--load-outputs", saved, "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["passed"]
    # A board whose outputs drifted: the comparison fails on the tensor that moved.
    arrays = dict(np.load(saved, allow_pickle=False))
    arrays["stage1/s1_0"] = arrays["stage1/s1_0"] + 1.0
    np.savez(saved, **arrays)
    code, out, err = cli(capsys, "compare", bundle_master, "--load-outputs", saved)
    assert code == 1 and "first failing tensor: stage1/s1_0" in out


def test_two_bundles_of_one_model_compare_equal(bundle_master, tmp_path, capsys):
    other = str(tmp_path / "copy.edgebundle")
    shutil.copytree(bundle_master, other)
    code, out, err = cli(capsys, "compare", bundle_master, other, "--samples", "4", "--json")
    assert code == 0, err
    res = json.loads(out)["results"]
    assert len(res) == 1 and res[0]["run"] == other and res[0]["graphs"][0]["max_abs"] == 0.0


def test_nothing_to_compare_and_bad_files_are_clear_errors(bundle_master, tmp_path, capsys):
    code, _, err = cli(capsys, "compare", bundle_master)
    assert code == 4 and "nothing to compare" in err
    junk = str(tmp_path / "junk.npz")
    np.savez(junk, x=np.zeros(3))
    code, _, err = cli(capsys, "compare", bundle_master, "--load-outputs", junk)
    assert code == 4 and "not an outputs file" in err


def test_validate_check_exits_1_when_the_reference_does_not_match(bundle, capsys):
    from edgesdk.converters.draft import edit_bundle
    with edit_bundle(bundle) as draft:   # a consistent bundle whose recorded outputs are off
        rel = draft.manifest["reference"]["file"]
        arrays = dict(np.load(draft.path(rel), allow_pickle=False))
        arrays["exit_1"] = arrays["exit_1"] + 1.0
        np.savez(draft.path(rel), **arrays)
        draft.add_files([rel])
    code, out, err = cli(capsys, "validate", bundle, "--check")
    assert code == 1 and "FAILED" in out and "do not match" in err
