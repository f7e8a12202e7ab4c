"""Bundles as tar archives for transport (RPC uploads, copying to boards).

A bundle is a directory; a tar is only its travelling form. Packing takes regular files
only. Unpacking refuses, before writing anything, every member that could land outside the
destination or is not a plain file or directory (absolute paths, ``..``, links, devices),
then verifies the unpacked bundle's hashes. Python 3.6 compatible (no ``tarfile`` filters).
"""
import io
import os
import posixpath
import tarfile

from edgesdk.bundle import MANIFEST, read_bundle, staging_directory
from edgesdk.errors import BundleError

MAX_MEMBERS = 10000


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


def unpack_bundle(data, dest, force=False):
    """Unpack tar ``data`` (bytes) into the bundle directory ``dest`` and verify it.

    Every member is checked before anything is written, and the bundle appears at ``dest``
    only once complete and verified.
    """
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError("not a readable bundle archive: {}".format(exc))
    with tar:
        if len(members) > MAX_MEMBERS:
            raise BundleError("archive has {} members; a bundle has far fewer".format(len(members)))
        seen = set()
        for m in members:
            _check_member(m)
            if m.name.rstrip("/") in seen:
                raise BundleError("archive member '{}' appears twice; refusing to unpack".format(
                    m.name))
            seen.add(m.name.rstrip("/"))
        if MANIFEST not in [m.name for m in members]:
            raise BundleError("archive has no {} at its top level: not a bundle".format(MANIFEST))
        with staging_directory(dest, force=force) as tmp:
            for m in members:
                target = os.path.join(tmp, *m.name.split("/"))
                try:
                    if m.isdir():
                        os.makedirs(target, exist_ok=True)
                        continue
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    src = tar.extractfile(m)
                    with open(target, "wb") as out:
                        out.write(src.read())
                except (OSError, tarfile.TarError, EOFError) as exc:
                    # a name too long for this file system, a file where a directory goes,
                    # member data cut short
                    raise BundleError("cannot unpack archive member '{}': {}".format(m.name, exc))
            read_bundle(tmp)
    return read_bundle(dest)
