"""The hand-written manifest validator: every rule names the JSON path it found wrong."""
import copy
import json

import pytest

from edgesdk import manifest as mf
from edgesdk.bundle import read_bundle, seal_manifest
from edgesdk.errors import ManifestError, SchemaVersionError


@pytest.fixture
def good(bundle_master):
    return copy.deepcopy(read_bundle(bundle_master).manifest)


def test_converted_manifest_is_valid_and_sealed(good):
    assert mf.validate(good) is good
    assert mf.content_digest(good) == good["manifest_sha256"]
    assert good["schema_version"] == mf.SCHEMA_VERSION
    assert set(good["files"]) == {e["file"] for e in good["stages"] + good["exits"]} | {
        good["reference"]["file"]}


@pytest.mark.parametrize("mutate, path", [
    (lambda m: m.pop("stages"), "missing required key 'stages'"),
    (lambda m: m.update(num_classes="10"), "$.num_classes"),
    (lambda m: m.update(num_classes=True), "$.num_classes: expected an integer, got a boolean"),
    (lambda m: m["stages"][0].update(format="tflite"), "$.stages[0].format"),
    (lambda m: m["stages"][1].update(macs=-1), "$.stages[1].macs"),
    (lambda m: m["exits"][0].update(after_stage=2), "$.exits[0].after_stage"),
    (lambda m: m["exits"].pop(), "$.exits: expected one exit per stage"),
    (lambda m: m["exits"][0].update(threshold="high"), "$.exits[0].threshold"),
    (lambda m: m["inputs"][0].update(shape=[None, 1, 0, 28]), "$.inputs[0].shape[2]"),
    (lambda m: m["inputs"][0].update(dtype="uint8"), "$.inputs[0].dtype"),
    (lambda m: m["inputs"][0]["preprocessing"].update(std=[0.0]), "$.inputs[0].preprocessing.std"),
    (lambda m: m["stages"][0].update(id="Stage 0"), "$.stages[0].id"),
    (lambda m: m["exits"][1].update(id="stage0"), "$.exits[1].id"),
    (lambda m: m["stages"][0].update(file="stages/other.onnx"), "not listed in $.files"),
    (lambda m: m["files"]["stages/stage0.onnx"].update(sha256="ABC"), ".sha256"),
    (lambda m: m["stages"][0].update(precision="int4"), "$.stages[0].precision"),
    (lambda m: m["stages"][0].update(builds=[{"file": "stages/stage1.onnx", "format": "onnx"}]),
     "$.stages[0].builds: the selected build"),
    (lambda m: m["stages"][0].update(builds=[{"file": "stages/stage0.onnx", "format": "onnx"}] * 2),
     "$.stages[0].builds[1]: a second onnx fp32 build"),
    (lambda m: m["stages"][0].update(builds=[{"file": "stages/x.int8.onnx", "format": "onnx"}]),
     "$.stages[0].builds[0].file"),
    (lambda m: m["exits"][0].update(dropped=True, threshold=0.9), "a dropped exit has no threshold"),
    (lambda m: m["exits"][-1].update(dropped=True), "the final exit cannot be dropped"),
    (lambda m: m.update(manifest_sha256=123), "$.manifest_sha256"),
    (lambda m: m.update(schema_version=0), "$.schema_version"),
    (lambda m: m.update(stages=[]), "$.stages"),
    # Numbers the runtime sizes arrays with are bounded.
    (lambda m: m.update(num_classes=10 ** 9), "$.num_classes: must be in 2..1048576"),
    (lambda m: m["inputs"][0].update(shape=[None, 1 << 20, 1 << 20]),
     "$.inputs[0].shape: 1099511627776 elements per sample"),
    (lambda m: m["stages"][0].update(output_shapes=[[None, 4096, 4096, 4096]]),
     "$.stages[0].output_shapes[0]: 68719476736 elements"),
    (lambda m: m["exits"][0].update(output_shapes=[[None, 11]]),
     "$.exits[0].output_shapes[0]: an exit gives logits of shape [null, num_classes]"),
    (lambda m: m.update(memory={"device_bytes": 0, "activation_bytes_per_sample": 1}),
     "$.memory.device_bytes"),
    (lambda m: m.update(memory={"device_bytes": None, "activation_bytes_per_sample": -1}),
     "$.memory.activation_bytes_per_sample"),
])
def test_invalid_manifest_names_the_path(good, mutate, path):
    mutate(good)
    with pytest.raises(ManifestError) as err:
        mf.validate(good)
    assert path in str(err.value)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "stages/../../x.onnx",
                                 "stages\\x.onnx", "C:/x.onnx", "stages//x.onnx", "./x.onnx"])
def test_paths_must_stay_inside_the_bundle(good, bad):
    entry = good["files"].pop("stages/stage0.onnx")
    good["files"][bad] = entry
    good["stages"][0]["file"] = bad
    with pytest.raises(ManifestError) as err:
        mf.validate(good)
    assert "$.files['{}']".format(bad) in str(err.value)


def test_newer_schema_is_refused_with_the_fix(good):
    good["schema_version"] = mf.SCHEMA_VERSION + 1
    with pytest.raises(SchemaVersionError) as err:
        mf.validate(good)
    assert "Upgrade edgesdk" in str(err.value)


def test_digest_ignores_key_order_and_formatting(good):
    shuffled = json.loads(json.dumps(good, sort_keys=False, indent=3))
    assert mf.content_digest(shuffled) == mf.content_digest(good)
    good["exits"][0]["threshold"] = 0.5
    assert mf.content_digest(good) != good["manifest_sha256"]
    assert seal_manifest(good)["manifest_sha256"] == mf.content_digest(good)


def _schema():
    import os
    with open(os.path.join(os.path.dirname(mf.__file__), "manifest.schema.json")) as f:
        return json.load(f)


def test_json_schema_mirror_accepts_real_manifests_and_rejects_bad_ones(good):
    import jsonschema
    validator = jsonschema.Draft202012Validator(_schema())
    assert list(validator.iter_errors(good)) == []
    for mutate in (lambda m: m["stages"][0].update(format="tflite"),
                   lambda m: m.update(num_classes=1),
                   lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}}),
                   lambda m: m["inputs"][0].update(shape=[None, 0])):
        bad = copy.deepcopy(good)
        mutate(bad)
        assert list(validator.iter_errors(bad)), "schema accepted a manifest the validator refuses"
        with pytest.raises(ManifestError):
            mf.validate(bad)


def test_the_schema_names_the_formats_of_the_backends_table():
    from edgesdk.backends import EXECUTORS, FORMATS
    schema = _schema()
    graph = schema["$defs"]["graph"]["properties"]
    assert graph["format"]["enum"] == list(FORMATS)
    assert graph["builds"]["items"]["properties"]["format"]["enum"] == list(FORMATS)
    assert sorted(FORMATS) == EXECUTORS.names()
