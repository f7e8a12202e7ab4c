"""Executors load the bytes that were checked: a file swapped after the bundle was opened is
refused, and libraries are loaded from private copies of their checked bytes."""
import ctypes
import hashlib
import os
import shutil
import stat
import subprocess

import onnx
import pytest

from edgesdk import bundle as bundle_io
from edgesdk.errors import IntegrityError
from edgesdk.runtime import load_bundle
from edgesdk.verified import VerifiedFile, loadable_path


def _record(path):
    with open(path, "rb") as f:
        data = f.read()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_a_graph_swapped_after_the_check_is_refused(bundle, monkeypatch):
    check = bundle_io.verify_files
    head = os.path.join(bundle, "heads", "exit0.onnx")

    def check_then_swap(root, manifest, *rest):
        check(root, manifest, *rest)
        graph = onnx.load(head)              # same inputs and outputs, other bytes: the
        graph.doc_string = "swapped"         # swap a writer could make between the check
        onnx.save(graph, head)               # and the load
    monkeypatch.setattr(bundle_io, "verify_files", check_then_swap)
    with pytest.raises(IntegrityError, match="changed after the bundle was opened"):
        load_bundle(bundle)


def test_a_graph_grown_after_the_check_is_refused_without_reading_it_all(bundle):
    model = load_bundle(bundle)              # loads fine as it is
    head = os.path.join(bundle, "heads", "exit1.onnx")
    record = model.bundle.manifest["files"]["heads/exit1.onnx"]
    with open(head, "ab") as f:
        f.write(b"\0" * (1 << 20))
    with pytest.raises(IntegrityError, match="more than {}".format(record["bytes"])):
        VerifiedFile(head, record).data()


def test_private_copies_hold_the_checked_bytes(tmp_path):
    lib = tmp_path / "graph.so"
    lib.write_bytes(b"checked bytes")
    hwh = tmp_path / "graph.hwh"
    hwh.write_text("<hwh/>")
    source = VerifiedFile(str(lib), _record(str(lib)))
    anonymous = source.private_path()
    lib.write_bytes(b"swapped bytes")        # the copy does not follow the bundle's file
    with open(anonymous, "rb") as f:
        assert f.read() == b"checked bytes"
    lib.write_bytes(b"checked bytes")
    named = VerifiedFile(str(lib), _record(str(lib)), [(str(hwh), _record(str(hwh)))])
    path = named.private_path(named=True)
    assert os.path.basename(path) == "graph.so" and os.path.dirname(path) != str(tmp_path)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert open(os.path.join(os.path.dirname(path), "graph.hwh")).read() == "<hwh/>"
    named.close()
    assert not os.path.exists(path)


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_libraries_loaded_one_after_another_are_each_their_own(tmp_path):
    # dlopen matches loaded libraries by path name: two libraries from private copies must
    # not share one name, or the second load returns the first library.
    values = []
    for k in (1, 2):
        src = tmp_path / "lib{}.c".format(k)
        src.write_text("int which(void) {{ return {}; }}\n".format(k))
        so = str(tmp_path / "lib{}.so".format(k))
        subprocess.run(["cc", "-shared", "-fPIC", "-o", so, str(src)], check=True)
        with loadable_path(VerifiedFile(so, _record(so))) as local:
            values.append(ctypes.CDLL(local).which())
    assert values == [1, 2]


def test_loaded_graphs_are_hashed_once_when_read_and_every_other_file_at_open(bundle,
                                                                              monkeypatch):
    from edgesdk.runtime.memory import files_to_load
    hashed = []
    real = bundle_io.sha256_file
    monkeypatch.setattr(bundle_io, "sha256_file", lambda p, *a: hashed.append(p) or real(p, *a))
    model = load_bundle(bundle)
    loaded = {os.path.join(bundle, *f.split("/")) for f in files_to_load(
        model.bundle.manifest, model.builds)}
    listed = {os.path.join(bundle, *f.split("/")) for f in model.bundle.manifest["files"]}
    assert loaded and not loaded & set(hashed)     # their executors hashed the bytes they load
    assert set(hashed) == listed - loaded           # the reference and the rest, at open
