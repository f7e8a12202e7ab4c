"""The bundle directory: verified reading, atomic writing, atomic manifest updates.

A bundle is ``NAME.edgebundle/`` with ``manifest.json`` and the files it lists, each with a
sha256. Reading refuses anything that does not match; writing goes to a temporary sibling
directory that replaces the old one whole (:mod:`edgesdk.atomic`), so the path always holds
the complete old or the complete new bundle, even after a crash. Runs on the device (Python
3.6, stdlib only).
"""
import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile

from edgesdk import atomic
from edgesdk import manifest as mf
from edgesdk.errors import BundleError, IntegrityError, ManifestError

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SUFFIX = ".edgebundle"


def sha256_file(path, chunk=1 << 20):
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class Bundle(object):
    """A bundle directory whose manifest and files have been checked."""

    def __init__(self, root, manifest):
        self.root = root
        self.manifest = manifest

    def path(self, rel):
        """Absolute path of a bundle-relative file (already checked to stay inside)."""
        return os.path.join(self.root, *rel.split("/"))

    @property
    def name(self):
        return self.manifest["name"]


def _read_manifest(root):
    path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise BundleError("'{}' is not a bundle directory (expected NAME{}/ with {})".format(
            root, SUFFIX, MANIFEST))
    if not os.path.isfile(path):
        raise IntegrityError("'{}' has no {}; it is not a bundle, or it was not written "
                             "completely. Convert the model again.".format(root, MANIFEST))
    size = os.path.getsize(path)
    if size > mf.MAX_MANIFEST_BYTES:
        raise ManifestError("{}: {} bytes is larger than the {} bytes a manifest may have".format(
            path, size, mf.MAX_MANIFEST_BYTES))
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ManifestError("{}: not UTF-8 text ({})".format(path, exc))
    except ValueError as exc:
        raise ManifestError("{}: not valid JSON ({})".format(path, exc))
    except RecursionError:
        raise ManifestError("{}: JSON nested too deeply".format(path))


def _reject_constant(name):
    raise ValueError("{} is not allowed in a manifest".format(name))


def _resolve_inside(root, rel):
    """Absolute path of ``rel``; refuse symlinks or anything resolving outside ``root``."""
    real_root = os.path.realpath(root)
    full = os.path.join(root, *rel.split("/"))
    real = os.path.realpath(full)
    if os.path.commonpath([real_root, real]) != real_root:
        raise IntegrityError("{}: '{}' resolves outside the bundle ({}); bundles may only "
                             "reference their own files".format(root, rel, real))
    if os.path.islink(full):
        raise IntegrityError("{}: '{}' is a symbolic link; bundles must hold regular files".format(
            root, rel))
    return full


def verify_files(root, manifest, hashed_when_read=()):
    """Check every listed file: inside the bundle, a regular file, right size, right sha256.
    ``hashed_when_read``: files whose sha256 the reader checks on the bytes it reads
    (:mod:`edgesdk.verified`); hashing them here too would read them twice."""
    for rel, entry in sorted(manifest["files"].items()):
        full = _resolve_inside(root, rel)
        try:
            st = os.stat(full)
        except OSError:
            raise IntegrityError("{}: '{}' is listed in the manifest but missing; copy the whole "
                                 "bundle directory again".format(root, rel))
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError("{}: '{}' is not a regular file".format(root, rel))
        if st.st_size != entry["bytes"]:
            raise IntegrityError("{}: '{}' has {} bytes, the manifest records {} (truncated or "
                                 "changed); copy the bundle again or convert again".format(
                                     root, rel, st.st_size, entry["bytes"]))
        if rel in hashed_when_read:
            continue
        digest = sha256_file(full)
        if digest != entry["sha256"]:
            raise IntegrityError("{}: '{}' sha256 {} does not match the manifest's {} (the file "
                                 "was changed or corrupted); copy the bundle again or convert "
                                 "again".format(root, rel, digest[:16], entry["sha256"][:16]))


def read_bundle(root, verify=True, hashed_when_read=None):
    """Open a bundle: parse and validate the manifest, check its digest and every file hash.
    ``hashed_when_read``: a function of the manifest giving files whose hash their reader
    checks instead (see :func:`verify_files`)."""
    root = os.path.abspath(root)
    if not os.path.lexists(root):
        atomic.recover(root)  # a writer killed while replacing it may have moved it aside
    manifest = mf.validate(_read_manifest(root))
    if mf.content_digest(manifest) != manifest["manifest_sha256"]:
        raise IntegrityError(
            "{}/{} was changed outside edgesdk (its content no longer matches manifest_sha256). "
            "Change thresholds with `edgesdk calibrate`, or convert the model again.".format(
                root, MANIFEST))
    if verify:
        verify_files(root, manifest,
                     set(hashed_when_read(manifest)) if hashed_when_read else ())
    return Bundle(root, manifest)


def write_json_atomic(path, obj):
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic.atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def seal_manifest(manifest):
    """Set ``manifest_sha256`` and validate; returns the manifest. A signature the changed
    manifest no longer matches is removed (with a warning): sign the bundle again."""
    from edgesdk.signing import drop_stale_signature
    if drop_stale_signature(manifest):
        log.warning("the manifest changed after it was signed; its signature was removed: "
                    "sign the bundle again (edgesdk sign)")
    manifest["manifest_sha256"] = mf.content_digest(manifest)
    return mf.validate(manifest)


def hash_files(root, rels):
    """The ``files`` table entries for bundle-relative paths under ``root``."""
    table = {}
    for rel in rels:
        full = os.path.join(root, *rel.split("/"))
        table[rel] = {"sha256": sha256_file(full), "bytes": os.path.getsize(full)}
    return table


@contextlib.contextmanager
def staging_directory(final, force=False):
    """Yield a temporary directory beside ``final``; on success it replaces ``final``.

    The caller writes every file (manifest last); if anything raises, the temporary directory
    is removed and ``final`` is untouched. With ``force`` an existing bundle is replaced only
    after the new one is complete, in one atomic swap where the system allows it. A process
    killed at any moment leaves the complete old bundle or the complete new one at ``final``
    (after :func:`edgesdk.atomic.recover`, which reading and writing run).
    """
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    if not os.path.isdir(parent):
        raise BundleError("output directory '{}' does not exist".format(parent))
    with atomic.writer_lock(final):
        with _staging(final, parent, force) as tmp:
            yield tmp


@contextlib.contextmanager
def _staging(final, parent, force):
    atomic.recover(final)
    if os.path.exists(final) and not force:
        raise BundleError("'{}' already exists; choose another output path or pass force=True "
                          "(--force) to replace it".format(final))
    tmp = tempfile.mkdtemp(prefix=atomic.temporary_prefix(final, "tmp"), dir=parent)
    try:
        yield tmp
        for dirpath, _, filenames in os.walk(tmp, topdown=False):
            for name in filenames:
                with open(os.path.join(dirpath, name), "rb") as f:
                    os.fsync(f.fileno())
            atomic.fsync_dir(dirpath)
        if os.path.lexists(final):
            atomic.replace_directory(tmp, final)
        else:
            os.rename(tmp, final)
            atomic.fsync_dir(parent)
    except BaseException:
        atomic.remove(tmp)
        raise


def unlisted_entries(bundle):
    """Bundle-relative paths in the directory that its manifest does not list (nor the
    folders holding listed files): files, links, FIFOs... that no edgesdk step reads."""
    listed = set(bundle.manifest["files"]) | {MANIFEST}
    folders = {"/".join(rel.split("/")[:k]) for rel in listed for k in range(1, rel.count("/") + 1)}
    out = []
    for d, dirs, files in os.walk(bundle.root):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(d, name), bundle.root).replace(os.sep, "/")
            if rel not in listed and rel not in folders:
                out.append(rel)
        dirs[:] = [n for n in dirs if not os.path.islink(os.path.join(d, n))]
    return sorted(out)


@contextlib.contextmanager
def rewrite_bundle(bundle):
    """Yield a staging copy of the verified :class:`Bundle` to change; on success it replaces
    the bundle, on failure the bundle is untouched.

    Only the manifest and the files it lists are copied, each checked to be a regular file
    inside the bundle and copied without following links: whatever else sits in the directory
    (a symbolic link to ``/etc``, a FIFO, ``/dev/zero``) is left out of the new bundle, with a
    warning naming it."""
    root = bundle.root
    stray = unlisted_entries(bundle)
    if stray:
        log.warning("%s: leaving out %d unlisted entr%s (no edgesdk step reads them): %s", root,
                    len(stray), "y" if len(stray) == 1 else "ies", ", ".join(stray[:10]) +
                    (", ..." if len(stray) > 10 else ""))
    with staging_directory(root, force=True) as tmp:
        for rel in sorted(bundle.manifest["files"]) + [MANIFEST]:
            src = _resolve_inside(root, rel)
            if not stat.S_ISREG(os.lstat(src).st_mode):
                raise IntegrityError("{}: '{}' is not a regular file; bundles hold regular files "
                                     "only".format(root, rel))
            dst = os.path.join(tmp, *rel.split("/"))
            if not os.path.isdir(os.path.dirname(dst)):
                os.makedirs(os.path.dirname(dst))
            shutil.copy2(src, dst, follow_symlinks=False)
        yield tmp


def write_manifest(root, manifest):
    """Seal and write ``manifest.json`` into a (staging) bundle directory atomically."""
    write_json_atomic(os.path.join(root, MANIFEST), seal_manifest(manifest))


def update_manifest(root, change):
    """Re-read and verify a bundle, apply ``change(manifest)`` and replace the manifest atomically.

    The old manifest stays in place until the new one is completely on disk; the bundle's
    writer lock is held from the read to the write (:func:`edgesdk.atomic.writer_lock`).
    """
    with atomic.writer_lock(root):
        bundle = read_bundle(root)
        manifest = json.loads(json.dumps(bundle.manifest))
        change(manifest)
        write_manifest(bundle.root, manifest)
        return read_bundle(bundle.root)
