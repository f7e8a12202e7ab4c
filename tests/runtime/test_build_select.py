"""Strict build selection: a requested build runs or is refused, and every result says which ran."""
import json

import numpy as np
import pytest

from conftest import cli
from edgesdk.errors import BundleError, InputError
from edgesdk.runtime import load_bundle
from edgesdk.runtime.build_select import parse_request


@pytest.fixture(scope="module")
def inputs(mnist_split, tmp_path_factory):
    _, (x, y) = mnist_split
    path = tmp_path_factory.mktemp("builds") / "few.npz"
    np.savez(str(path), x=x[:6], y=y[:6])
    return x[:6], str(path)


def test_selected_builds_are_reported_per_graph(tx2_master, inputs):
    model = load_bundle(tx2_master)
    res = model.run(inputs[0])
    ids = [e["id"] for e in model.bundle.manifest["stages"] + model.bundle.manifest["exits"]]
    assert sorted(res.builds) == sorted(ids)
    # The TX2 bundle selects its FP16 ONNX graphs.
    assert {(b["format"], b["precision"]) for b in res.builds.values()} == {("onnx", "fp16")}
    assert all(b["file"] == model.builds[g]["file"] for g, b in res.builds.items())


def test_a_requested_precision_runs_on_every_graph(tx2_master, inputs):
    res = load_bundle(tx2_master, builds="int8").run(inputs[0])
    assert {b["precision"] for b in res.builds.values()} == {"int8"}
    assert all(b["file"].endswith(".int8.onnx") for b in res.builds.values())


@pytest.mark.parametrize("request_", ["tvm", "tensorrt", ("tvm", "fp32")])
def test_a_missing_build_is_refused_with_what_the_bundle_has(bundle_master, request_):
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_master, builds=request_)
    msg = str(err.value)
    assert "has no '{}' build".format(request_ if isinstance(request_, str) else
                                      ":".join(request_)) in msg
    assert "onnx fp32" in msg and ",fallback" in msg


def test_fallback_is_explicit_and_reported(bundle_master, inputs):
    model = load_bundle(bundle_master, builds="tvm", fallback=True)
    assert {b["format"] for b in model.run(inputs[0]).builds.values()} == {"onnx"}


@pytest.mark.parametrize("request_", ["made-up", ("onnx", "int3"), ("nope", "fp32")])
def test_an_unknown_build_name_is_a_user_error(bundle_master, request_):
    with pytest.raises(InputError, match="fp32.*int8|format"):
        load_bundle(bundle_master, builds=request_)


def test_a_build_for_an_unknown_graph_is_refused(bundle_master):
    with pytest.raises(InputError, match="stage9"):
        load_bundle(bundle_master, builds={"stage9": "int8"})


def test_parse_request():
    assert parse_request("int8") == ("int8", False)
    assert parse_request("onnx:fp32,fallback") == (("onnx", "fp32"), True)
    with pytest.raises(InputError, match="one build"):
        parse_request("int8,fp16")


def test_cli_run_refuses_a_build_the_bundle_lacks(bundle_master, inputs, capsys):
    code, out, err = cli(capsys, "run", bundle_master, inputs[1], "--builds", "tensorrt")
    assert code == 4 and out == ""
    assert "has no 'tensorrt' build" in err
    code, out, _ = cli(capsys, "run", bundle_master, inputs[1], "--builds", "tensorrt,fallback",
                       "--json")
    assert code == 0
    assert {b["format"] for b in json.loads(out)["summary"]["builds"].values()} == {"onnx"}


def test_cli_run_and_validate_say_which_builds_ran(tx2_master, inputs, capsys):
    code, out, _ = cli(capsys, "run", tx2_master, inputs[1], "--builds", "int8")
    assert code == 0 and "builds run: onnx int8 (cpu): stage0, stage1" in out
    code, out, _ = cli(capsys, "validate", tx2_master, "--check", "--builds", "onnx:fp32",
                       "--json")
    assert code == 0
    ref = json.loads(out)["reference"]
    assert {b["precision"] for b in ref["builds"].values()} == {"fp32"}
    # FP32 graphs checked against the FP16 builds' reference: by top-1 class, near ties left out.
    assert ref["mode"] == "top-1" and ref["atol"] >= 5e-2 and ref["passed"]
    assert len(ref["top1_agreement"]) == 3 and min(ref["decisive_samples"]) > 0
    code, out, _ = cli(capsys, "validate", tx2_master, "--check", "--builds", "int8")
    assert code == 0 and "another precision than the reference" in out
    code, _, err = cli(capsys, "validate", tx2_master, "--builds", "int8")
    assert code == 4 and "add --check" in err


def test_decisive_agreement_ignores_near_ties_only():
    from edgesdk.runtime.reference import decisive_agreement
    expected = [np.array([[2.0, 0.0], [1.0, 0.99], [0.0, 3.0]])]
    same = [np.array([[1.5, 0.2], [0.9, 1.0], [0.1, 2.0]])]      # flips only the near tie
    ok, counted, agreement = decisive_agreement(same, expected, 0.05, 0.01)
    assert ok == [True] and counted == [2] and agreement == [pytest.approx(2 / 3)]
    flipped = [np.array([[0.0, 2.0], [1.0, 0.99], [0.0, 3.0]])]  # flips a decisive sample
    assert decisive_agreement(flipped, expected, 0.05, 0.01)[0] == [False]
