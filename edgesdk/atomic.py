"""Crash-safe replacement: a file or a directory is replaced whole, and what a killed writer
left behind is repaired by the next reader or writer.

Files: a temporary sibling, fsync, ``os.replace``, fsync of the directory. Directories (bundles):
swapped with the complete new one in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``);
where that is unavailable, the old one is moved aside first and :func:`recover` puts it back
if the writer dies before the new one is in place. Runs on the device (Python 3.6, stdlib only).
"""
import binascii
import contextlib
import errno
import hashlib
import logging
import os
import platform
import re
import shutil
import sys
import tempfile

try:
    import fcntl
except ImportError:  # not a POSIX system: writers are not serialized there
    fcntl = None

log = logging.getLogger(__name__)
# Whether a writer that finds a bundle locked waits for it (the CLI's --wait) or fails.
WAIT_FOR_WRITERS = False
_held = {}  # bundle path -> how many times this process holds its writer lock


def fsync_dir(path):
    """fsync a directory (its entries), where the system allows it."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path, newline=None):
    """Yield a text file to write; on success it replaces ``path`` (fsync, rename, fsync of the
    directory). On an error, or if the process is killed, ``path`` keeps its old content; a
    killed writer's temporary file (``.NAME.tmp-HOST-PID-*``) is removed by the next write."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    _remove_stale(directory, os.path.basename(path))
    prefix = os.path.join(directory, temporary_prefix(path, "tmp"))
    while True:
        tmp = prefix + binascii.hexlify(os.urandom(4)).decode("ascii")
        try:  # mode 0666 less the umask, as a plain open() would create it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    try:
        with os.fdopen(fd, "w", newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# Temporary siblings of a path P are named .P.tmp-HOST-PID-XXXX (a bundle being written, or
# after a swap the old one being removed) and .P.old-HOST-PID-XXXX/bundle (the old bundle moved
# aside where directories cannot be swapped in one step). HOST (a hash of the host name) and
# PID say whose they are: only a dead process's leftovers on this host are ever repaired.
_OWNER = re.compile(r"^([0-9a-f]{8})-([0-9]+)-")
AT_FDCWD = -100
RENAME_EXCHANGE = 2
# renameat2 by number where the C library has no wrapper (glibc < 2.28: Ubuntu 18.04 on
# Jetson boards), keyed by machine and pointer size (a 32-bit user space may run on a 64-bit
# kernel).
_SYS_RENAMEAT2 = {("x86_64", 8): 316, ("aarch64", 8): 276, ("aarch64", 4): 382,
                  ("armv7l", 4): 382, ("armv6l", 4): 382, ("i686", 4): 353, ("i386", 4): 353}
_exchange_impl = None  # None: not looked up yet; False: unavailable here


def _host_tag():
    return hashlib.sha256(platform.node().encode("utf-8", "replace")).hexdigest()[:8]


def temporary_prefix(path, kind):
    """Name prefix of this process's ``kind`` ("tmp" or "old") sibling of ``path``."""
    return ".{}.{}-{}-{}-".format(os.path.basename(path), kind, _host_tag(), os.getpid())


def _pid_alive(pid):
    """Whether process ``pid`` on this host may still run (in doubt: yes)."""
    if os.name != "posix" or pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _siblings(parent, base, any_owner=False):
    """``(path, kind, owner)`` for the temporary siblings of ``parent/base`` left by processes
    of this host that have ended; those of live processes, of other hosts and with names
    not written by this module are left out. ``any_owner``: every one this module named,
    whatever host or process (the caller holds the bundle's writer lock, so no writer is
    at work)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    host = _host_tag()
    out = []
    for name in names:
        for kind in ("tmp", "old"):
            prefix = ".{}.{}-".format(base, kind)
            owner = _OWNER.match(name[len(prefix):]) if name.startswith(prefix) else None
            if owner and (any_owner or owner.group(1) == host and
                          not _pid_alive(int(owner.group(2)))):
                out.append((os.path.join(parent, name), kind, owner.group(0)))
    return out


def remove(path):
    """Remove a file or a directory tree, ignoring errors."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def _remove_stale(parent, base):
    """Remove temporary siblings of ``parent/base`` left by dead processes (never another's)."""
    for path, _, _ in _siblings(parent, base):
        remove(path)


def recover(final):
    """Repair what a killed writer left beside the bundle path ``final``.

    A writer that cannot swap directories in one step moves the old bundle aside
    (``.NAME.old-HOST-PID-*/bundle``), then renames its new one (``.NAME.tmp-HOST-PID-*``)
    into place. Killed between the two, it leaves ``final`` missing and both directories:
    the old bundle is put back. Every other directory of a dead writer is removed: a
    ``.tmp-`` one never holds the only copy of what was at ``final``, an ``.old-`` one
    without its writer's ``.tmp-`` one was already replaced. When no writer holds the
    bundle's lock (:func:`writer_lock`), everything left beside it is stale, whatever host
    or process wrote it (hostnames change with every container start); while one holds it,
    only the directories of dead processes of this host are touched (the process id and a
    hash of the host name are in each name). Errors (a read-only file system) are ignored:
    reading then reports what is missing.
    """
    final = os.path.abspath(final)
    if final in _held:
        return _recover(final, any_owner=True)
    try:
        # No writer holds the lock: whatever is left beside the bundle is stale, whichever
        # host or process wrote it (a container's hostname changes on every start).
        with writer_lock(final, wait=False):
            return _recover(final, any_owner=True)
    except (OSError, _busy()):   # a live writer, or no lock here (a read-only directory)
        return _recover(final, any_owner=False)


def _busy():
    from edgesdk.errors import BundleBusyError
    return BundleBusyError


def _recover(final, any_owner):
    parent, base = os.path.split(final)
    siblings = _siblings(parent, base, any_owner)
    writing = set(owner for _, kind, owner in siblings if kind == "tmp")
    aside = [p for p, kind, owner in siblings if kind == "old" and owner in writing
             and os.path.isdir(os.path.join(p, "bundle"))]
    try:
        if aside and not os.path.lexists(final):
            os.rename(os.path.join(max(aside, key=os.path.getmtime), "bundle"), final)
            fsync_dir(parent)
    except OSError:
        pass
    keep = not os.path.lexists(final)  # could not put it back: leave the old bundle aside
    for path, kind, owner in siblings:
        if not (keep and path in aside):
            remove(path)
    _remove_unheld_lock(final)


def _remove_unheld_lock(final):
    """Remove the lock file a killed writer left (the kernel released its lock; only the
    file remains), never one that a live writer holds."""
    path = lock_path(final)
    if fcntl is None or final in _held or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)   # a writer that opened it meanwhile re-checks the inode
    except OSError:
        pass                  # held by a live writer, or already gone
    finally:
        os.close(fd)


def _exchange_function():
    """A function swapping two paths atomically (renameat2 RENAME_EXCHANGE), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    wrapper = getattr(libc, "renameat2", None)
    if wrapper is not None:
        wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
        wrapper.restype = ctypes.c_int
        return lambda a, b: (wrapper(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE),
                             ctypes.get_errno())
    number = _SYS_RENAMEAT2.get((platform.machine(), ctypes.sizeof(ctypes.c_void_p)))
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    return lambda a, b: (syscall(ctypes.c_long(number), ctypes.c_long(AT_FDCWD),
                                 ctypes.c_char_p(a), ctypes.c_long(AT_FDCWD), ctypes.c_char_p(b),
                                 ctypes.c_ulong(RENAME_EXCHANGE)), ctypes.get_errno())


def _exchange(a, b):
    """Swap the paths ``a`` and ``b`` in one step; False where this system cannot."""
    global _exchange_impl
    if _exchange_impl is None:
        try:
            _exchange_impl = _exchange_function() or False
        except (OSError, AttributeError):
            _exchange_impl = False
    if not _exchange_impl:
        return False
    result, err = _exchange_impl(os.fsencode(a), os.fsencode(b))
    if result == 0:
        return True
    if err == errno.ENOSYS:  # kernel older than 3.15
        _exchange_impl = False
        return False
    # The file system cannot exchange (EINVAL), or a seccomp filter refuses the call (EPERM):
    # the two-rename fallback then succeeds or reports its own error.
    if err in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), b)


def replace_directory(tmp, final):
    """Put the complete directory ``tmp`` at ``final``, which exists; the parent directory
    is synced once the new one is in place."""
    parent = os.path.dirname(final)
    if _exchange(tmp, final):
        fsync_dir(parent)
        remove(tmp)  # now the old bundle; a leftover is removed by the next recovery
        return
    # Two renames. A writer killed between them leaves ``final`` missing and the old bundle
    # in .NAME.old-HOST-PID-*/bundle: recover() puts it back.
    old = tempfile.mkdtemp(prefix=temporary_prefix(final, "old"), dir=parent)
    os.rename(final, os.path.join(old, "bundle"))
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(os.path.join(old, "bundle"), final)
        os.rmdir(old)
        raise
    fsync_dir(parent)
    # Rename it to a .tmp- name before removing it: an .old- directory always holds a
    # complete bundle (a half-removed one must never be restored).
    garbage = os.path.join(parent, temporary_prefix(final, "tmp") + "old-" +
                           binascii.hexlify(os.urandom(4)).decode("ascii"))
    os.rename(old, garbage)
    remove(garbage)


def lock_path(final):
    """The lock file of the bundle path ``final``: ``.NAME.lock`` beside it (the bundle
    directory itself is swapped whole, so it cannot hold its own lock)."""
    final = os.path.abspath(final)
    return os.path.join(os.path.dirname(final), "." + os.path.basename(final) + ".lock")


@contextlib.contextmanager
def writer_lock(final, wait=None):
    """Hold the exclusive writer lock of the bundle path ``final`` (``fcntl.flock`` on
    :func:`lock_path`). Every edgesdk step that writes a bundle takes it before reading what it
    changes, so two writers never both start from the same old bundle. Another process holding
    it: :class:`~edgesdk.errors.BundleBusyError`, or with ``wait`` (default
    :data:`WAIT_FOR_WRITERS`) a message and a wait. Re-entrant within a process. The lock file
    is removed on release (and re-checked after locking, so a file removed meanwhile is not
    trusted)."""
    from edgesdk.errors import BundleBusyError
    final = os.path.abspath(final)
    if fcntl is None or final in _held:
        _held[final] = _held.get(final, 0) + 1
        try:
            yield
        finally:
            _held[final] -= 1
            if not _held[final]:
                del _held[final]
        return
    wait = WAIT_FOR_WRITERS if wait is None else wait
    path = lock_path(final)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            if not wait:
                os.close(fd)
                raise BundleBusyError(
                    "another edgesdk process is writing '{}' (it holds {}); run this again when "
                    "it is done, or pass --wait to wait for it".format(final, path))
            if not told:
                log.warning("waiting for another edgesdk process writing %s", final)
                told = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file as we waited: lock the new one
    _held[final] = 1
    try:
        yield
    finally:
        del _held[final]
        try:
            os.unlink(path)
        finally:
            os.close(fd)
