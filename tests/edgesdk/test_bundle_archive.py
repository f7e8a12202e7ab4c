"""Bundles as tar archives: round trip, and every unsafe member refused before writing."""
import io
import os
import tarfile

import pytest

from conftest import snapshot
from edgesdk.bundle_archive import pack_bundle, unpack_bundle
from edgesdk.errors import BundleError, IntegrityError


def _tar(members):
    """Tar bytes from ``[(TarInfo, bytes or None)]``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data=b"x"):
    return tarfile.TarInfo(name), data


def test_round_trip_gives_the_same_bundle(bundle, tmp_path):
    out = unpack_bundle(pack_bundle(bundle), str(tmp_path / "copy.edgebundle"))
    assert snapshot(out.root) == snapshot(bundle)


def test_changed_byte_is_refused_and_nothing_is_left(bundle, tmp_path):
    data = bytearray(pack_bundle(bundle))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        graph = next(m for m in tar.getmembers() if m.name.endswith(".onnx"))
    data[graph.offset_data + graph.size // 2] ^= 0xFF
    out = tmp_path / "unpacked"
    out.mkdir()
    with pytest.raises(IntegrityError, match="sha256"):
        unpack_bundle(bytes(data), str(out / "bad.edgebundle"))
    assert os.listdir(str(out)) == []


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, message", [
    (_file("../evil"), "unsafe path"),
    (_file("/etc/evil"), "unsafe path"),
    (_file("stages/../../evil"), "unsafe path"),
    (_file("a/./b"), "unsafe path"),
    (_link("manifest.json", "/etc/passwd", tarfile.SYMTYPE), "link or special"),
    (_link("x", "manifest.json", tarfile.LNKTYPE), "link or special"),
])
def test_unsafe_members_are_refused(tmp_path, member, message):
    data = _tar([_file("manifest.json", b"{}"), member])
    with pytest.raises(BundleError, match=message):
        unpack_bundle(data, str(tmp_path / "b.edgebundle"))
    assert os.listdir(str(tmp_path)) == []


def test_not_a_tar_and_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        unpack_bundle(b"garbage" * 100, str(tmp_path / "b.edgebundle"))
    with pytest.raises(BundleError, match="no manifest.json"):
        unpack_bundle(_tar([_file("stages/x.onnx")]), str(tmp_path / "b.edgebundle"))


def test_an_archive_file_is_streamed_and_unpacks_the_same(bundle, tmp_path):
    path = tmp_path / "b.tar"
    path.write_bytes(pack_bundle(bundle))
    out = unpack_bundle(str(path), str(tmp_path / "copy.edgebundle"))
    assert snapshot(out.root) == snapshot(bundle)


def test_compressed_archives_are_refused(bundle, tmp_path):
    import gzip
    with pytest.raises(BundleError, match="uncompressed"):
        unpack_bundle(gzip.compress(pack_bundle(bundle)), str(tmp_path / "b.edgebundle"))
    assert not os.path.exists(tmp_path / "b.edgebundle")


def test_the_member_count_is_capped_while_reading_headers(tmp_path, monkeypatch):
    import edgesdk.bundle_archive as archive
    monkeypatch.setattr(archive, "MAX_MEMBERS", 50)
    with pytest.raises(BundleError, match="more than 50 members"):
        unpack_bundle(_tar([_file("manifest.json")] + [_file("f{}".format(k)) for k in range(60)]),
                      str(tmp_path / "b.edgebundle"))


def test_member_and_total_sizes_are_capped_before_writing(bundle, tmp_path, monkeypatch):
    import edgesdk.bundle_archive as archive
    data = pack_bundle(bundle)
    biggest = max(m.size for m in tarfile.open(fileobj=io.BytesIO(data)).getmembers())
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", biggest - 1)
    with pytest.raises(BundleError, match="claims {} bytes".format(biggest)):
        unpack_bundle(data, str(tmp_path / "a.edgebundle"))
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", biggest)
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", biggest + 10)
    with pytest.raises(BundleError, match="unpacks to more than"):
        unpack_bundle(data, str(tmp_path / "b.edgebundle"))
    assert not os.path.exists(tmp_path / "a.edgebundle") and \
        not os.path.exists(tmp_path / "b.edgebundle")


def test_sparse_members_are_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        tar.addfile(info, io.BytesIO(b""))
        sparse = tarfile.TarInfo("stages/stage0.onnx")
        sparse.type = tarfile.GNUTYPE_SPARSE   # a small header that could unpack to gigabytes
        tar.addfile(sparse, io.BytesIO(b""))
    with pytest.raises(BundleError, match="sparse"):
        unpack_bundle(buf.getvalue(), str(tmp_path / "b.edgebundle"))


@pytest.mark.parametrize("first", [True, False])
def test_a_pax_record_too_long_for_tarfile_is_a_bundle_error(tmp_path, first):
    """Found by atheris: CPython's pax parser raises OverflowError on a record length of
    10**23, at the first header or at a later one."""
    body = b"99999999999999999999999 path=a\n"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(body)
    bomb = pax.tobuf(format=tarfile.USTAR_FORMAT) + body.ljust(512, b"\0")
    manifest = tarfile.TarInfo("manifest.json").tobuf(format=tarfile.USTAR_FORMAT)
    data = (bomb + manifest if first else manifest + bomb) + b"\0" * 1024
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        unpack_bundle(data, str(tmp_path / "b.edgebundle"))
    assert not os.path.exists(tmp_path / "b.edgebundle")
