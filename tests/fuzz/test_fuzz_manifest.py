"""Fuzzing edgesdk.manifest.validate: every input gives the manifest back or a ManifestError /
SchemaVersionError naming the JSON path; nothing else escapes."""
import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesdk import manifest as mf
from edgesdk.bundle import read_bundle
from edgesdk.errors import ManifestError, SchemaVersionError
from fuzz_strategies import JSON, ODD, check_error, fuzz_settings, mutated


@pytest.fixture(scope="module")
def good(bundle_master):
    return read_bundle(bundle_master).manifest


def check_validate(m):
    """validate(m): the same dict back (then hashable), or a located ManifestError."""
    try:
        out = mf.validate(m)
    except SchemaVersionError as exc:
        check_error(exc, "schema_version")
        return None
    except ManifestError as exc:
        check_error(exc, "manifest.json: $")
        return None
    assert out is m and isinstance(out, dict)
    assert len(mf.content_digest(out)) == 64  # read_bundle hashes it next
    return out


@fuzz_settings(300)
@given(doc=JSON | ODD)
def test_arbitrary_json_is_refused_with_a_path(doc):
    assert check_validate(doc) is None


@fuzz_settings(400)
@given(data=st.data())
def test_mutated_manifest_validates_or_names_the_path(good, data):
    doc = data.draw(mutated(good))
    out = check_validate(doc)
    if out is not None:  # a mutation the schema allows (free-form fields, optional keys)
        assert out["stages"] and len(out["stages"]) == len(out["exits"])


@fuzz_settings(100)
@given(data=st.data(), which=st.sampled_from(["stages", "exits", "inputs"]),
       key=st.sampled_from(["builds", "gate", "widths", "qonnx", "preprocessing", "shape",
                            "output_shapes", "inputs"]),
       value=JSON | ODD | st.lists(JSON | ODD, min_size=1, max_size=3))
def test_optional_sections_with_wrong_item_types(good, data, which, key, value):
    """Lists whose items are not objects, objects with wrong members, in optional sections."""
    doc = copy.deepcopy(good)
    entry = data.draw(st.sampled_from(doc[which]))
    entry[key] = value
    check_validate(doc)


# Regressions: minimal inputs the fuzzing found (each raised a non-EdgeSDKError before).
def test_gate_output_shape_that_is_not_a_list(good):
    doc = copy.deepcopy(good)  # was TypeError: 'int' object is not subscriptable
    doc["stages"][0]["gate"] = {"file": doc["stages"][0]["file"], "outputs": ["g"],
                                "output_shapes": [5], "threshold": 0.5}
    with pytest.raises(ManifestError, match=r"\$\.stages\[0\]\.gate"):
        mf.validate(doc)


def test_huge_integer_in_preprocessing(good):
    doc = copy.deepcopy(good)  # was OverflowError: int too large to convert to float
    doc["inputs"][0]["preprocessing"]["mean"] = [10 ** 400]
    with pytest.raises(ManifestError, match=r"\$\.inputs\[0\]\.preprocessing\.mean"):
        mf.validate(doc)
    doc["inputs"][0]["preprocessing"].update(mean=[0.1], scale=10 ** 400)
    with pytest.raises(ManifestError, match=r"preprocessing\.scale: must be finite"):
        mf.validate(doc)


@pytest.mark.parametrize("value, message", [
    (float("inf"), r"\$\.provenance\.x: must be a finite number"),
    (float("nan"), r"\$\.provenance\.x: must be a finite number"),
    ({1: "a"}, r"\$\.provenance\.x: object keys must be strings"),
    ((1, 2), r"\$\.provenance\.x: expected a JSON value"),
])
def test_free_form_sections_hold_only_json(good, value, message):
    doc = copy.deepcopy(good)  # inf was accepted, then content_digest raised ValueError
    doc["provenance"]["x"] = value
    with pytest.raises(ManifestError, match=message):
        mf.validate(doc)


def test_deep_nesting_is_refused_without_recursion(good):
    doc = copy.deepcopy(good)
    deep = None
    for _ in range(mf.MAX_DEPTH + 1):
        deep = [deep]
    doc["provenance"]["x"] = deep
    with pytest.raises(ManifestError, match="nested deeper than"):
        mf.validate(doc)
    for _ in range(100000):  # far beyond the recursion limit: still a ManifestError
        deep = [deep]
    doc["provenance"]["x"] = deep
    with pytest.raises(ManifestError, match="nested deeper than"):
        mf.validate(doc)


# What manifest.schema.json cannot express and only the validator checks: references between
# parts of the manifest, counts that must match other counts, numbers JSON Schema cannot tell
# apart (2.0 is an integer to it; inf is a number) and limits on products or depth.
VALIDATOR_ONLY = (
    "is not listed in $.files", "expected one exit per stage", "one per input channel",
    "expected one shape per output", "an exit gives logits of shape", "one per class",
    "must follow stage", "expected a unique id", "must be a finite number", "must be finite",
    "list of finite numbers",
    "expected an integer, got float", "min must not exceed max", "must have the same length",
    "elements per sample", "nested deeper than", "a second ", "the selected build",
    "no previous exit for a router", "the last level answers", "dropped exit",
    "final exit cannot be dropped", "cannot list itself", "lone surrogate")


def _schema_validator():
    import json
    import os
    import jsonschema
    with open(os.path.join(os.path.dirname(mf.__file__), "manifest.schema.json")) as f:
        return jsonschema.Draft202012Validator(json.load(f))


SCHEMA = _schema_validator()


def _verdicts(doc):
    """(validator's error or None, schema's first error or None) for ``doc``."""
    try:
        mf.validate(doc)
        ours = None
    except (ManifestError, SchemaVersionError) as exc:
        ours = str(exc)
    theirs = next(iter(SCHEMA.iter_errors(doc)), None)
    return ours, theirs


@fuzz_settings(600)
@given(data=st.data())
def test_schema_and_validator_agree_on_mutated_manifests(good, data):
    doc = data.draw(mutated(good))
    ours, theirs = _verdicts(doc)
    if ours is None:
        assert theirs is None, "the schema refuses what the validator accepts: {} {}".format(
            theirs.json_path, theirs.message)
    elif theirs is None:
        assert any(s in ours for s in VALIDATOR_ONLY), \
            "the schema accepts what the validator refuses: " + ours


def test_schema_refuses_newer_versions_missing_parts_and_unsafe_paths(good):
    for mutate in (lambda m: m.update(schema_version=99),
                   lambda m: m["exits"].clear(),
                   lambda m: m["stages"][0].update(output_shapes=[[None, 2 ** 21]]),
                   lambda m: m.update(class_names=[1] * m["num_classes"]),
                   lambda m: m.update(created=5)):
        bad = copy.deepcopy(good)
        mutate(bad)
        ours, theirs = _verdicts(bad)
        assert ours is not None and theirs is not None, (ours, theirs)
