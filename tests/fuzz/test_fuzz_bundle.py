"""Fuzzing the bundle loader: random bytes, truncated and mutated (re-sealed) manifests, odd
file names, and tar archives. Only a Bundle / EdgeModel or an EdgeSDKError may come out."""
import io
import json
import os
import shutil
import tarfile
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesdk import manifest as mf
from edgesdk.bundle import read_bundle
from edgesdk.bundle_archive import pack_bundle, unpack_bundle
from edgesdk.errors import EdgeSDKError
from edgesdk.runtime import load_bundle
from fuzz_strategies import ODD, check_error, fuzz_settings, mutated


class _Master(tuple):
    """(root, manifest bytes, parsed manifest, tar bytes), shown short in failure reports."""

    def __repr__(self):
        return "<the tiny bundle>"


@pytest.fixture(scope="module")
def master(bundle_master):
    with open(os.path.join(bundle_master, "manifest.json"), "rb") as f:
        raw = f.read()
    return _Master((bundle_master, raw, json.loads(raw.decode("utf-8")), pack_bundle(bundle_master)))


def _sealed(doc):
    """``doc`` as manifest.json bytes with a matching digest where one can be computed, so a
    mutation reaches the checks behind the digest."""
    if isinstance(doc, dict):
        try:
            doc["manifest_sha256"] = mf.content_digest(doc)
        except (ValueError, TypeError, RecursionError):
            pass  # inf, nan or deep nesting: json cannot encode the digest body either
    return json.dumps(doc).encode("utf-8", "surrogatepass")


def _load(root, model):
    """read_bundle (and load_bundle when ``model``): the result, or None after an error."""
    try:
        b = read_bundle(root)
        assert isinstance(b.manifest, dict) and b.manifest["stages"]
        if model:
            assert load_bundle(root, threads=1).num_exits == len(b.manifest["exits"])
        return b
    except EdgeSDKError as exc:
        check_error(exc)
        return None


def _with_manifest(master, raw, files=()):
    tmp = tempfile.mkdtemp()
    root = os.path.join(tmp, "b.edgebundle")
    shutil.copytree(master[0], root)
    with open(os.path.join(root, "manifest.json"), "wb") as f:
        f.write(raw)
    for rel in files:  # odd file names the mutated manifest lists: give them real files
        try:
            os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
            shutil.copy(os.path.join(root, "stages", "stage0.onnx"), os.path.join(root, rel))
        except (OSError, ValueError):
            pass
    return tmp, root


@fuzz_settings(150)
@given(data=st.data())
def test_random_truncated_and_mutated_manifests(master, data):
    kind = data.draw(st.sampled_from(["bytes", "truncated", "mutated", "mutated"]))
    if kind == "bytes":
        raw = data.draw(st.binary(max_size=512))
    elif kind == "truncated":
        raw = master[1][:data.draw(st.integers(0, len(master[1]) - 1))]
    else:
        raw = _sealed(data.draw(mutated(master[2])))
    tmp, root = _with_manifest(master, raw)
    try:
        b = _load(root, model=False)
        assert kind == "mutated" or b is None or raw.strip() == master[1].strip()
    finally:
        shutil.rmtree(tmp)


NAMES = st.sampled_from(["st\u00e4ges/\u00fcml\u00e4ut.onnx", "\u202egnp.onnx", "a" * 300,
                         "x/" * 40 + "x", "../x.onnx", "/abs.onnx", "s/./x", "C:/x",
                         "stages\\x", "\x00", "\ud800.onnx", " ", "manifest.json"]) | st.text(
                             min_size=1, max_size=20)


@fuzz_settings(60)
@given(data=st.data(), name=NAMES, model=st.booleans())
def test_unicode_and_unsafe_file_names(master, data, name, model):
    """A graph renamed (files table and references) to an odd name with a real file there."""
    doc = json.loads(master[1].decode("utf-8"))
    entry = data.draw(st.sampled_from(doc["stages"] + doc["exits"]))
    doc["files"][name] = doc["files"].pop(entry["file"])
    entry["file"] = name
    tmp, root = _with_manifest(master, _sealed(doc), files=[name])
    try:
        _load(root, model)
    finally:
        shutil.rmtree(tmp)


@fuzz_settings(25)
@given(data=st.data())
def test_mutated_manifest_through_load_bundle(master, data):
    """Mutations that survive read_bundle go on to the engine (policies, builds, thresholds)."""
    doc = data.draw(mutated(master[2], max_mutations=2))
    tmp, root = _with_manifest(master, _sealed(doc))
    try:
        _load(root, model=True)
    finally:
        shutil.rmtree(tmp)


def _tar_mutation(data, tar_bytes):
    kind = data.draw(st.sampled_from(["bytes", "truncated", "flip", "members"]))
    if kind == "bytes":
        return data.draw(st.binary(max_size=2048))
    if kind == "truncated":
        return tar_bytes[:data.draw(st.integers(0, len(tar_bytes) - 1))]
    if kind == "flip":
        b = bytearray(tar_bytes)
        for _ in range(data.draw(st.integers(1, 8))):
            b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        return bytes(b)
    buf = io.BytesIO()  # a small archive of odd members
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in data.draw(st.lists(NAMES | st.just("manifest.json"), max_size=4)):
            if any(0xD800 <= ord(c) < 0xE000 for c in name):
                continue  # tarfile cannot write lone surrogates (the loader test has them)
            info = tarfile.TarInfo(name)
            body = data.draw(st.binary(max_size=64))
            info.size = len(body)
            info.type = data.draw(st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE,
                                                   tarfile.SYMTYPE, tarfile.FIFOTYPE]))
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@fuzz_settings(150)
@given(data=st.data())
def test_unpack_random_and_mutated_archives(master, data, tmp_path):
    raw = _tar_mutation(data, master[3])
    dest = tempfile.mkdtemp(dir=str(tmp_path))
    target = os.path.join(dest, "out.edgebundle")
    try:
        assert unpack_bundle(raw, target).manifest["stages"]
    except EdgeSDKError as exc:
        check_error(exc)
        assert not os.path.exists(target)  # nothing half-unpacked
        assert os.listdir(dest) == []  # no staging directory left behind
    finally:
        shutil.rmtree(dest)


# Regressions (minimal inputs found by fuzzing).
def test_non_finite_number_in_a_free_form_field(master, tmp_path):
    """1e999 parses to inf: validate() accepted it, then the digest raised ValueError."""
    raw = master[1].replace(b'"source": "pytorch"', b'"source": 1e999')
    assert raw != master[1]
    tmp, root = _with_manifest(master, raw)
    try:
        with pytest.raises(EdgeSDKError, match=r"\$\.provenance\.source: must be a finite"):
            read_bundle(root)
    finally:
        shutil.rmtree(tmp)


def test_manifest_nested_to_just_under_the_parser_limit(master):
    """Nesting the parser just accepts: re-encoding it for the digest, a few stack frames
    deeper, raised RecursionError. The border depends on the stack depth: try them all."""
    tmp, root = _with_manifest(master, b"")
    try:
        for n in range(500, 1001):
            with open(os.path.join(root, "manifest.json"), "wb") as f:
                f.write(master[1].replace(b'"source": "pytorch"',
                                          b'"source": ' + b"[" * n + b"]" * n))
            with pytest.raises(EdgeSDKError, match="nested"):
                read_bundle(root)
    finally:
        shutil.rmtree(tmp)


def test_file_name_with_a_lone_surrogate(master):
    """JSON's "\\ud800" escape: os.path.realpath raised UnicodeEncodeError in read_bundle."""
    doc = json.loads(master[1].decode("utf-8"))
    doc["files"]["\ud800.onnx"] = doc["files"].pop(doc["stages"][0]["file"])
    doc["stages"][0]["file"] = "\ud800.onnx"
    tmp, root = _with_manifest(master, _sealed(doc))
    try:
        with pytest.raises(EdgeSDKError, match="lone surrogate"):
            read_bundle(root)
    finally:
        shutil.rmtree(tmp)


def _odd_tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue()


@pytest.mark.parametrize("members, message", [
    ([("a" * 300, tarfile.REGTYPE), ("manifest.json", tarfile.REGTYPE)], "File name too long"),
    ([("x", tarfile.REGTYPE), ("x/y", tarfile.REGTYPE), ("manifest.json", tarfile.REGTYPE)],
     "cannot unpack archive member 'x/y'"),
    ([("manifest.json", tarfile.REGTYPE), ("manifest.json", tarfile.DIRTYPE)], "appears twice"),
])
def test_archives_that_cannot_be_written(tmp_path, members, message):
    """Were OSError / FileExistsError / NotADirectoryError out of unpack_bundle."""
    with pytest.raises(EdgeSDKError, match=message):
        unpack_bundle(_odd_tar(members), str(tmp_path / "out.edgebundle"))
    assert os.listdir(str(tmp_path)) == []
