"""Loading the bytes that were verified, not whatever the path holds a moment later.

Checking a file's sha256 by path and then handing the path to ONNX Runtime or ``dlopen``
leaves a window: a writer that swaps the file in between gets its own graph or library run.
A :class:`VerifiedFile` closes it: its bytes are read once, hashed, compared with the
manifest and only then given to the executor, as bytes (ONNX Runtime sessions, TensorRT
engines) or as a path to a private copy of those bytes (shared libraries, bitstreams): an
anonymous memory file (``memfd_create``, its ``/proc/self/fd`` path) where the kernel has it,
else a file in a private 0700 directory. Python 3.6 compatible (memfd through ``ctypes``
before Python 3.8).
"""
import contextlib
import ctypes
import errno
import hashlib
import os
import platform
import shutil
import tempfile

from edgesdk.errors import IntegrityError

# memfd_create by system call number where os.memfd_create (Python >= 3.8) is missing.
_SYS_MEMFD_CREATE = {("x86_64", 8): 319, ("aarch64", 8): 279, ("armv7l", 4): 385,
                     ("armv6l", 4): 385, ("i686", 4): 356, ("i386", 4): 356}
MFD_CLOEXEC = 1
_KEPT_FDS = []      # memory files libraries were loaded from (see VerifiedFile.private_path)
_COUNTER = [0]      # private directories made by this process


class VerifiedFile(object):
    """A bundle file as its manifest lists it (``record``: ``{"sha256", "bytes"}``).

    ``str()`` is its path in the bundle (for messages); :meth:`data` its checked bytes;
    :meth:`private_path` a path to a checked private copy, valid until :meth:`close`."""

    def __init__(self, path, record, companions=(), lookup=None):
        self.path = path
        self.record = record
        # Files a loader reads beside this one by name (a bitstream's .hwh): (path, record).
        self.companions = list(companions)
        # name -> (path, record) of a listed file beside this one, or None if not listed.
        self.lookup = lookup
        self._dir = None

    def with_companions(self, names):
        """This file with the listed files ``names`` beside it as companions (a graph's
        external data); :class:`IntegrityError` for a name that is not a plain file name or
        not listed in the manifest."""
        found = []
        for name in names:
            hit = None
            if name and "/" not in name and "\\" not in name and not name.startswith(".") \
                    and self.lookup is not None:
                hit = self.lookup(name)
            if hit is None:
                raise IntegrityError(
                    "'{}' reads external data from {!r}, which is not a file of the bundle "
                    "listed in its manifest (a plain file name beside the graph, hashed like "
                    "every other): refused".format(self.path, name))
            found.append(hit)
        return VerifiedFile(self.path, self.record, self.companions + found, self.lookup)

    def __str__(self):
        return self.path

    def data(self):
        """The file's bytes, read once and checked against the manifest's size and sha256."""
        return _checked(self.path, self.record)

    def private_path(self, named=False):
        """A path to a private copy of the checked bytes, for loaders that take paths
        (``dlopen``, PYNQ). ``named``: the loader goes by the file name (its suffix, files
        beside it), so the copy keeps it, in a private directory with the companions;
        otherwise an anonymous memory file where the system has one."""
        data = self.data()
        if not named and not self.companions:
            fd = _memfd(os.path.basename(self.path))
            if fd is not None:
                _write_all(fd, data)
                # Never closed: dlopen matches loaded libraries by path name, so a later
                # library at a reused /proc/self/fd/N would get this one's handle. The
                # library stays mapped for the process's life anyway (ctypes and TVM keep it).
                _KEPT_FDS.append(fd)
                return "/proc/self/fd/{}".format(fd)
        if self._dir is None:   # mode 0700; a name never used before in this process
            _COUNTER[0] += 1
            self._dir = tempfile.mkdtemp(prefix="edgesdk-verified-{}-".format(_COUNTER[0]))
        for path, record, blob in [(self.path, self.record, data)] + [
                (p, r, None) for p, r in self.companions]:
            dest = os.path.join(self._dir, os.path.basename(path))
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, blob if blob is not None else _checked(path, record))
            finally:
                os.close(fd)
        return os.path.join(self._dir, os.path.basename(self.path))

    def close(self):
        """Remove the private directory copies (a library loaded from one stays mapped)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@contextlib.contextmanager
def loadable_path(source, named=False):
    """A path a loader may open for ``source`` (a :class:`VerifiedFile`: a private copy of its
    checked bytes, released when the block ends: a loaded library stays mapped; a plain
    path: itself)."""
    if not isinstance(source, VerifiedFile):
        yield os.path.abspath(source)
        return
    try:
        yield source.private_path(named)
    finally:
        source.close()


def read_bytes(source):
    """The bytes of ``source``: a :class:`VerifiedFile` (checked) or a plain path."""
    if isinstance(source, VerifiedFile):
        return source.data()
    with open(source, "rb") as f:
        return f.read()


def _checked(path, record):
    try:
        with open(path, "rb") as f:
            data = f.read(record["bytes"] + 1)   # never more than the manifest allows
    except (OSError, IOError) as exc:
        raise IntegrityError("'{}' cannot be read: {}".format(path, exc))
    if len(data) != record["bytes"]:
        raise IntegrityError("'{}' has {} bytes, the manifest records {} (it changed after the "
                             "bundle was opened); load the bundle again".format(
                                 path, len(data) if len(data) <= record["bytes"] else
                                 "more than {}".format(record["bytes"]), record["bytes"]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise IntegrityError("'{}' sha256 {} does not match the manifest's {} (it changed after "
                             "the bundle was opened); load the bundle again".format(
                                 path, digest[:16], record["sha256"][:16]))
    return data


def _memfd(name):
    """A new anonymous memory file descriptor, or None where the system has none."""
    create = getattr(os, "memfd_create", None)
    try:
        if create is not None:
            return create(name, MFD_CLOEXEC)
        number = _SYS_MEMFD_CREATE.get((platform.machine(), ctypes.sizeof(ctypes.c_void_p)))
        if number is None or not os.path.isdir("/proc/self/fd"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(number, name.encode("utf-8"), MFD_CLOEXEC)
        return fd if fd >= 0 else None
    except (OSError, AttributeError):
        return None


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        view = view[n:]
