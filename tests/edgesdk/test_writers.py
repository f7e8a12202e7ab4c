"""Writers copy only what the manifest lists, and take the bundle's lock before reading it."""
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from edgesdk import atomic
from edgesdk import bundle as bundle_io
from edgesdk.cli import main
from edgesdk.converters.draft import edit_bundle
from edgesdk.errors import BundleBusyError, IntegrityError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_rewrite_copies_only_listed_regular_files(bundle, tmp_path, caplog):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    os.symlink(str(secret), os.path.join(bundle, "stages", "notes.txt"))
    os.symlink("/dev/zero", os.path.join(bundle, "zero"))
    os.mkfifo(os.path.join(bundle, "pipe"))
    os.symlink("/etc", os.path.join(bundle, "etc"))
    with caplog.at_level(logging.WARNING, logger="edgesdk.bundle"):
        with edit_bundle(bundle) as draft:
            draft.manifest["exits"][0]["threshold"] = 0.75
    files = {os.path.relpath(os.path.join(d, f), bundle).replace(os.sep, "/")
             for d, _, names in os.walk(bundle) for f in names}
    listed = set(bundle_io.read_bundle(bundle).manifest["files"]) | {"manifest.json"}
    assert files == listed
    assert not any(os.path.lexists(os.path.join(bundle, n)) for n in ("zero", "pipe", "etc"))
    assert "4 unlisted entries" in caplog.text and "stages/notes.txt" in caplog.text
    assert bundle_io.read_bundle(bundle).manifest["exits"][0]["threshold"] == 0.75


def test_a_listed_file_turned_into_a_link_is_refused(bundle, tmp_path):
    target = os.path.join(bundle, "heads", "exit0.onnx")
    os.rename(target, str(tmp_path / "exit0.onnx"))
    os.symlink(str(tmp_path / "exit0.onnx"), target)
    with pytest.raises(IntegrityError, match="symbolic link|resolves outside the bundle"):
        with edit_bundle(bundle):
            pass


def _hold_lock(path):
    """A process holding ``path``'s writer lock until its stdin closes."""
    code = textwrap.dedent("""
        import sys
        from edgesdk import atomic
        with atomic.writer_lock(sys.argv[1]):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_fails_clearly_and_changes_nothing(bundle, capsys):
    holder = _hold_lock(bundle)
    try:
        before = bundle_io.read_bundle(bundle).manifest
        with pytest.raises(BundleBusyError, match="another edgesdk process is writing"):
            bundle_io.update_manifest(bundle, lambda m: m["exits"][0].update(threshold=0.5))
        code = main(["build", bundle, "--toolchain", "tvm", "--json"])
        assert code == 4 and "--wait" in capsys.readouterr().err
        assert bundle_io.read_bundle(bundle).manifest == before
    finally:
        holder.communicate("")
    assert not os.path.exists(atomic.lock_path(bundle))   # released and removed


def test_a_waiting_writer_starts_from_what_the_first_one_wrote(bundle):
    holder = _hold_lock(bundle)
    done = []

    def second():
        bundle_io.update_manifest(bundle, lambda m: m["exits"][1].update(threshold=0.6))
        done.append(time.monotonic())
    try:
        atomic.WAIT_FOR_WRITERS = True
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert not done                                   # still waiting for the holder
        released = time.monotonic()
    finally:
        holder.communicate("")
    t.join(30)
    atomic.WAIT_FOR_WRITERS = False
    assert done and done[0] >= released
    assert bundle_io.read_bundle(bundle).manifest["exits"][1]["threshold"] == 0.6


def test_writers_in_one_process_nest(bundle):
    with atomic.writer_lock(bundle):
        with edit_bundle(bundle) as draft:                # takes the same lock again
            draft.manifest["exits"][0]["threshold"] = 0.9
    assert bundle_io.read_bundle(bundle).manifest["exits"][0]["threshold"] == 0.9
    assert not os.path.exists(atomic.lock_path(bundle))
