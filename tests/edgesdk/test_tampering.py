"""Tampering and paths: every changed byte, every path leaving the bundle and every unsafe
archive member is refused with a message that says what and where."""
import io
import json
import os
import random
import tarfile

import pytest

from edgesdk import bundle as bio
from edgesdk.bundle_archive import pack_bundle, unpack_bundle
from edgesdk.errors import BundleError, IntegrityError, ManifestError
from edgesdk.runtime.engine import load_bundle


def _flip(path, position):
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0x01]))


def test_a_changed_byte_in_any_listed_file_is_refused(tx2_bundle):
    """The TX2 bundle holds FP32, FP16 and INT8 graphs, calibration caches and references."""
    files = bio.read_bundle(tx2_bundle).manifest["files"]
    assert len(files) > 15
    rng = random.Random(0)
    for rel, entry in sorted(files.items()):
        path = os.path.join(tx2_bundle, *rel.split("/"))
        position = rng.randrange(entry["bytes"])
        _flip(path, position)
        with pytest.raises(IntegrityError) as err:
            load_bundle(tx2_bundle)
        assert rel in str(err.value) and "sha256" in str(err.value)
        _flip(path, position)  # restore
    load_bundle(tx2_bundle)


def test_a_changed_byte_anywhere_in_the_manifest_is_refused(bundle):
    path = os.path.join(bundle, bio.MANIFEST)
    size = os.path.getsize(path)
    with open(path) as f:
        original = json.load(f)
    for position in random.Random(1).sample(range(size), 300):
        _flip(path, position)
        if _parses_to(path, original):
            # A digit past a float's 17 significant ones: the text changed, the manifest not
            # (-0.048153711275294976 and ...977 are the same double).
            _flip(path, position)
            continue
        with pytest.raises((ManifestError, IntegrityError)):
            bio.read_bundle(bundle, verify=False)
        _flip(path, position)
    bio.read_bundle(bundle)


def _parses_to(path, value):
    try:
        with open(path) as f:
            return json.load(f) == value
    except ValueError:
        return False


def _reseal(root, change):
    """Change the manifest and seal it again, as an attacker who knows the format would."""
    path = os.path.join(root, bio.MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    change(manifest)
    manifest["manifest_sha256"] = bio.mf.content_digest(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def _point_stage0_at(rel):
    def change(m):
        m["files"][rel] = m["files"].pop("stages/stage0.onnx")
        m["stages"][0]["file"] = rel
    return change


@pytest.mark.parametrize("rel", ["../outside.onnx", "stages/../../outside.onnx",
                                 "/etc/passwd", "C:/x.onnx", "stages\\..\\x.onnx"])
def test_a_manifest_pointing_outside_the_bundle_is_refused(bundle, rel):
    _reseal(bundle, _point_stage0_at(rel))
    with pytest.raises(ManifestError, match="relative POSIX path inside the bundle|must not "
                                            "contain empty, '.' or '..'"):
        load_bundle(bundle)


def test_a_symlinked_directory_leaving_the_bundle_is_refused(bundle, tmp_path):
    outside = tmp_path / "elsewhere"
    os.rename(os.path.join(bundle, "heads"), str(outside))
    os.symlink(str(outside), os.path.join(bundle, "heads"))
    with pytest.raises(IntegrityError, match="resolves outside the bundle"):
        load_bundle(bundle)


def _tar_with(bundle, extra):
    """The packed bundle with one more member appended."""
    buf = io.BytesIO(pack_bundle(bundle))
    out = io.BytesIO()
    with tarfile.open(fileobj=buf) as src, tarfile.open(fileobj=out, mode="w") as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m))
        info, data = extra
        tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _member(name, kind=tarfile.REGTYPE, link="", data=None):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if data is not None:
        info.size = len(data)
    return info, data


@pytest.mark.parametrize("member, message", [
    (_member("../../escape", data=b"x"), "unsafe path"),
    (_member("/tmp/escape", data=b"x"), "unsafe path"),
    (_member("stages\\..\\..\\escape", data=b"x"), "unsafe path"),
    (_member("stages/evil", tarfile.SYMTYPE, "../../../../etc/passwd"), "link or special"),
    (_member("stages/hard", tarfile.LNKTYPE, "/etc/passwd"), "link or special"),
    (_member("dev", tarfile.CHRTYPE), "link or special"),
    (_member("pipe", tarfile.FIFOTYPE), "link or special"),
])
def test_a_real_bundle_archive_with_one_unsafe_member_is_refused(bundle, tmp_path, member, message):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError, match=message):
        unpack_bundle(_tar_with(bundle, member), str(out / "b.edgebundle"))
    assert os.listdir(str(out)) == []


def test_an_archive_member_replacing_a_graph_is_refused(bundle, tmp_path):
    """A second member of the same name (tar extraction keeps the last) would change a
    graph's bytes; a changed member is caught by its hash."""
    data = _tar_with(bundle, _member("stages/stage0.onnx", data=b"not a graph"))
    with pytest.raises(BundleError, match="'stages/stage0.onnx' appears twice"):
        unpack_bundle(data, str(tmp_path / "b.edgebundle"))
    assert not os.path.exists(str(tmp_path / "b.edgebundle"))
