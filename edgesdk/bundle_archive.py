"""Bundles as tar archives for transport (RPC uploads, copying to boards).

A bundle is a directory; a tar is only its travelling form. Packing takes regular files
only and writes an uncompressed tar. Unpacking reads the archive as untrusted input: it is
streamed from a file (never read whole into memory), compressed and sparse archives are
refused (edgesdk never writes them), the member count is capped while the headers are read,
each member's size and the total are capped before anything is written and again while
copying, and every member that could land outside the destination or is not a plain file or
directory (absolute paths, ``..``, links, devices) is refused (with ``tarfile``'s ``data``
filter as well where this Python has it). The unpacked bundle's hashes are verified before it
appears at its path. Python 3.6 compatible.
"""
import io
import os
import posixpath
import tarfile

from edgesdk.bundle import MANIFEST, read_bundle, staging_directory
from edgesdk.errors import BundleError

MAX_MEMBERS = 10000
MAX_MEMBER_BYTES = 4 << 30   # one file of a bundle (a large graph or engine)
MAX_TOTAL_BYTES = 16 << 30   # everything unpacked
_CHUNK = 1 << 20


# What tarfile raises on headers it cannot read: its own errors, and for crafted pax records
# (a length of 10**23) exceptions CPython's parser lets through.
HEADER_ERRORS = (tarfile.TarError, EOFError, OverflowError, ValueError, UnicodeError)


def pack_bundle(root):
    """The verified bundle at ``root`` as uncompressed tar bytes (paths relative to it)."""
    bundle = read_bundle(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel in [MANIFEST] + sorted(bundle.manifest["files"]):
            tar.add(bundle.path(rel), arcname=rel, recursive=False)
    return buf.getvalue()


def _check_member(member):
    name = member.name
    parts = name.split("/")
    if (not name or name.startswith("/") or "\\" in name or ".." in parts
            or posixpath.normpath(name) != name.rstrip("/")):
        raise BundleError("archive member '{}' has an unsafe path (absolute, '..' or not "
                          "normalised); refusing to unpack".format(name))
    if not (member.isfile() or member.isdir()):
        raise BundleError("archive member '{}' is a link or special file; bundles hold only "
                          "regular files".format(name))


def _members(tar):
    """The archive's members, checked as their headers are read (count, size, type, path)."""
    members, seen, total = [], set(), 0
    while True:
        m = tar.next()
        if m is None:
            return members
        if len(members) >= MAX_MEMBERS:
            raise BundleError("archive has more than {} members; a bundle has far fewer".format(
                MAX_MEMBERS))
        _check_member(m)
        if m.issparse():
            raise BundleError("archive member '{}' is a sparse file; edgesdk writes none".format(
                m.name))
        if m.size > MAX_MEMBER_BYTES:
            raise BundleError("archive member '{}' claims {} bytes, more than the {} a bundle "
                              "file may have".format(m.name, m.size, MAX_MEMBER_BYTES))
        total += m.size
        if total > MAX_TOTAL_BYTES:
            raise BundleError("archive unpacks to more than {} bytes; refusing".format(
                MAX_TOTAL_BYTES))
        if m.name.rstrip("/") in seen:
            raise BundleError("archive member '{}' appears twice; refusing to unpack".format(m.name))
        seen.add(m.name.rstrip("/"))
        members.append(m)


def _copy(src, target, size):
    """Copy exactly ``size`` bytes of a member to a new file (never more)."""
    left = size
    with open(target, "wb") as out:
        while left:
            block = src.read(min(_CHUNK, left))
            if not block:
                raise BundleError("archive data ends inside member '{}'".format(target))
            out.write(block)
            left -= len(block)


def unpack_bundle(source, dest, force=False):
    """Unpack the tar ``source`` (a file path, or bytes) into the bundle directory ``dest``
    and verify it.

    Every member is checked before anything is written, and the bundle appears at ``dest``
    only once complete and verified.
    """
    data_filter = getattr(tarfile, "data_filter", None)   # Python >= 3.8.17 / 3.11.4
    try:
        # "r:": uncompressed only; a gzip or xz archive (a bomb, or not edgesdk's) is refused.
        tar = tarfile.open(source, mode="r:") if isinstance(source, str) else \
            tarfile.open(fileobj=io.BytesIO(source), mode="r:")
    except HEADER_ERRORS + (OSError,) as exc:
        raise BundleError("not a readable bundle archive (edgesdk writes uncompressed tars): "
                          "{}".format(exc))
    with tar:
        try:
            members = _members(tar)
        except HEADER_ERRORS as exc:
            raise BundleError("not a readable bundle archive: {}".format(exc))
        if MANIFEST not in [m.name for m in members]:
            raise BundleError("archive has no {} at its top level: not a bundle".format(MANIFEST))
        with staging_directory(dest, force=force) as tmp:
            if data_filter is not None:
                for m in members:
                    try:
                        data_filter(m, tmp)
                    except tarfile.FilterError as exc:
                        raise BundleError("archive member '{}' refused: {}".format(m.name, exc))
            for m in members:
                target = os.path.join(tmp, *m.name.split("/"))
                try:
                    if m.isdir():
                        os.makedirs(target, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    _copy(tar.extractfile(m), target, m.size)
                except (OSError, tarfile.TarError, EOFError) as exc:
                    # a name too long for this file system, a file where a directory goes,
                    # member data cut short
                    raise BundleError("cannot unpack archive member '{}': {}".format(m.name, exc))
            read_bundle(tmp)
    return read_bundle(dest)
