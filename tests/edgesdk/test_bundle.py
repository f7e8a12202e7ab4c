"""Reading refuses every kind of damage; writing is all-or-nothing."""
import json
import os

import pytest

from conftest import snapshot
from edgesdk import bundle as bio
from edgesdk.errors import BundleError, IntegrityError, ManifestError, SchemaVersionError


def _manifest(root):
    with open(os.path.join(root, "manifest.json")) as f:
        return json.load(f)


def _write_raw(root, manifest):
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def test_reads_a_converted_bundle(bundle):
    b = bio.read_bundle(bundle)
    assert b.name == "tiny" and len(b.manifest["stages"]) == 3
    assert os.path.isfile(b.path("stages/stage0.onnx"))


@pytest.mark.parametrize("rel", ["stages/stage1.onnx", "heads/exit2.onnx", "reference/reference.npz"])
def test_one_changed_byte_is_detected(bundle, rel):
    path = os.path.join(bundle, rel)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(IntegrityError) as err:
        bio.read_bundle(bundle)
    assert rel in str(err.value) and "sha256" in str(err.value)


def test_truncated_file_is_detected(bundle):
    path = os.path.join(bundle, "stages", "stage0.onnx")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(IntegrityError, match="truncated"):
        bio.read_bundle(bundle)


def test_missing_file_is_detected(bundle):
    os.remove(os.path.join(bundle, "heads", "exit1.onnx"))
    with pytest.raises(IntegrityError, match="heads/exit1.onnx.*missing"):
        bio.read_bundle(bundle)


def test_missing_manifest_is_reported(bundle):
    os.remove(os.path.join(bundle, "manifest.json"))
    with pytest.raises(IntegrityError, match="no manifest.json"):
        bio.read_bundle(bundle)


def test_symlink_leaving_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    target = os.path.join(bundle, "stages", "stage0.onnx")
    outside.write_bytes(open(target, "rb").read())
    os.remove(target)
    os.symlink(str(outside), target)
    with pytest.raises(IntegrityError, match="outside the bundle"):
        bio.read_bundle(bundle)


def test_symlink_inside_the_bundle_is_refused(bundle):
    target = os.path.join(bundle, "heads", "exit0.onnx")
    os.rename(target, target + ".real")
    os.symlink(target + ".real", target)
    with pytest.raises(IntegrityError, match="symbolic link"):
        bio.read_bundle(bundle)


def test_hand_edited_manifest_is_refused(bundle):
    m = _manifest(bundle)
    m["exits"][0]["threshold"] = 0.5
    _write_raw(bundle, m)
    with pytest.raises(IntegrityError, match="changed outside edgesdk"):
        bio.read_bundle(bundle)


def test_newer_schema_is_refused(bundle):
    m = _manifest(bundle)
    m["schema_version"] = 99
    _write_raw(bundle, m)
    with pytest.raises(SchemaVersionError, match="schema_version 99"):
        bio.read_bundle(bundle)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"), ('{"a": NaN}', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"), ("[" * 100000 + "]" * 100000, "manifest.json"),
])
def test_garbage_manifest_is_a_manifest_error(bundle, text, message):
    with open(os.path.join(bundle, "manifest.json"), "w") as f:
        f.write(text)
    with pytest.raises(ManifestError, match=message):
        bio.read_bundle(bundle)


def test_not_a_directory(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        bio.read_bundle(str(tmp_path / "nothing.edgebundle"))


def test_failed_write_leaves_nothing(tmp_path):
    final = tmp_path / "new.edgebundle"
    with pytest.raises(RuntimeError):
        with bio.staging_directory(str(final)) as tmp:
            open(os.path.join(tmp, "half"), "w").write("x")
            raise RuntimeError("crash while writing")
    assert os.listdir(str(tmp_path)) == []


def test_existing_bundle_needs_force_and_survives_a_failed_replace(bundle):
    before = snapshot(bundle)
    with pytest.raises(BundleError, match="already exists"):
        with bio.staging_directory(bundle):
            pass
    with pytest.raises(RuntimeError):
        with bio.staging_directory(bundle, force=True):
            raise RuntimeError("crash")
    assert snapshot(bundle) == before
    assert sorted(os.listdir(os.path.dirname(bundle))) == ["tiny.edgebundle"]


def test_update_manifest_is_atomic_on_error(bundle):
    before = snapshot(bundle)

    def change(m):
        m["exits"][0]["threshold"] = float("nan")  # JSON cannot hold it: the write must fail
    with pytest.raises(ValueError):
        bio.update_manifest(bundle, change)
    assert snapshot(bundle) == before
