"""Profiling boards through TVM's RPC tracker: a tracker and two edgesdk servers on loopback."""
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from edgesdk.cli import main
from edgesdk.converters.cost_model import ENGINE_ROWS
from edgesdk.profiles import PROFILE_METRICS, ProfileStore, graphs_sha256
from edgesdk.runtime import load_bundle
from edgesdk.runtime.rpc import RemoteError, profile_remote

tvm = pytest.importorskip("tvm", reason="the tvm extra is not installed")
KEY = "test-board"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, log):
    return subprocess.Popen([sys.executable, "-m"] + args, stdout=log, stderr=subprocess.STDOUT)


def _wait_until(ready, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except (RuntimeError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(what + " did not happen within {} s".format(timeout))


def _listening(port):
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


def _free_boards(port, key):
    return tvm.rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(key, {}).get("free", 0)


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """A TVM tracker with two edgesdk servers (key test-board) and one plain TVM server."""
    logs = tmp_path_factory.mktemp("rpc")
    port = _free_port()
    tracker = "127.0.0.1:{}".format(port)
    procs, files = [], []

    def start(name, args):
        f = open(str(logs / (name + ".log")), "w")
        files.append(f)
        procs.append(_start(args, f))

    start("tracker", ["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                      "--port-end", str(port + 1)])
    try:
        # Servers started before the tracker listens wait 5 s before retrying.
        _wait_until(lambda: _listening(port), "the tracker listening")
        for i in range(2):
            p = _free_port()
            start("board{}".format(i), ["edgesdk.runtime.cli.rpc_server", "--tracker", tracker, "--key", KEY,
                                        "--host", "127.0.0.1", "--port", str(p), "--port-end", str(p + 1)])
        p = _free_port()
        start("plain", ["tvm.exec.rpc_server", "--tracker", tracker, "--key", "plain-tvm",
                        "--host", "127.0.0.1", "--port", str(p), "--port-end", str(p + 1)])
        _wait_until(lambda: _free_boards(port, KEY) == 2, "two edgesdk boards registering")
        _wait_until(lambda: _free_boards(port, "plain-tvm") == 1, "the plain TVM board registering")
        yield tracker, logs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for f in files:
            f.close()


def test_two_boards_profile_at_once_and_rows_merge(boards, bundle_master, tmp_path):
    tracker, logs = boards
    db = str(tmp_path / "host.sqlite")
    results, errors = [], []

    def one():
        try:
            results.append(profile_remote(bundle_master, tracker, KEY, batch_sizes=[1, 2],
                                          warmup=2, repeats=200, db=db))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # The tracker handed one session to each board: both logged a connection.
    for i in range(2):
        assert "connected from" in (logs / "board{}.log".format(i)).read_text()
    manifest = load_bundle(bundle_master).bundle.manifest
    graphs = {e["id"] for e in manifest["stages"] + manifest["exits"]} | set(ENGINE_ROWS)
    for out in results:
        assert out["merged_rows"] == len(PROFILE_METRICS) * len(graphs) * 2
        assert {(r["graph"], r["batch"]) for r in out["graphs"]} == {(g, b) for g in graphs for b in (1, 2)}
    with ProfileStore(db, create=False) as store:
        rows = store.rows(bundle_sha256=graphs_sha256(manifest), metric="mean_ms")
        assert {(r["graph"], r["batch"]) for r in rows} == {(g, b) for g in graphs for b in (1, 2)}
        assert all(r["value"] > 0 for r in rows if r["graph"] not in ENGINE_ROWS)
        assert len(store.devices()) == 1


def test_cli_remote_profile_with_labelled_run(boards, bundle_master, mnist_split, tmp_path, capsys):
    import numpy as np
    tracker, _ = boards
    _, (x, y) = mnist_split
    data = str(tmp_path / "data.npz")
    np.savez(data, x=x[:50], y=y[:50])
    db = str(tmp_path / "host.sqlite")
    rc = main(["profile", bundle_master, "--rpc-tracker", tracker, "--key", KEY, "--db", db,
               "--repeats", "5", "--warmup", "1", "--data", data, "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["end_to_end"]["samples"] == 50 and sum(out["end_to_end"]["exit_counts"]) == 50
    with ProfileStore(db, create=False) as store:
        runs = store.runs()
        assert len(runs) == 1 and runs[0]["samples"] == 50
        scores = store.exit_scores(runs[0]["bundle_sha256"])
        assert [len(s) for s in list(scores.values())[0][0]] == [50] * len(out["end_to_end"]["exit_counts"])


def test_unknown_key_lists_the_known_ones(boards, bundle_master):
    tracker, _ = boards
    with pytest.raises(RemoteError, match="no board with key 'jetson-tx2'.*test-board"):
        profile_remote(bundle_master, tracker, "jetson-tx2", repeats=1, warmup=0)


def test_plain_tvm_server_is_explained(boards, bundle_master):
    tracker, _ = boards
    with pytest.raises(RemoteError, match="edgesdk rpc-server"):
        profile_remote(bundle_master, tracker, "plain-tvm", repeats=1, warmup=0)


def test_board_side_errors_come_back(boards, bundle_master, tmp_path):
    import numpy as np
    tracker, _ = boards
    data = str(tmp_path / "wrong.npz")
    np.savez(data, x=np.zeros((3, 2, 5, 5), np.float32))
    with pytest.raises(RemoteError, match="profiling on the board failed: InputError"):
        profile_remote(bundle_master, tracker, KEY, repeats=1, warmup=0, data=data)


def test_unreachable_tracker_and_bad_address(bundle_master):
    with pytest.raises(RemoteError, match="cannot reach the RPC tracker"):
        profile_remote(bundle_master, "127.0.0.1:{}".format(_free_port()), KEY)
    rc = main(["profile", bundle_master, "--rpc-tracker", "nohost", "--key", KEY])
    assert rc == 4


@pytest.mark.slow
def test_tuning_measures_candidates_on_a_board_through_the_tracker(boards, bundle_master, tmp_path):
    import onnx
    from edgesdk.bundle import read_bundle
    from edgesdk.converters.tvm.build import resolve_target
    from edgesdk.converters.tvm.tune import PROGRESS_FILE, tune
    from edgesdk.targets import get_target
    tracker, logs = boards
    host, port = tracker.rsplit(":", 1)
    head = read_bundle(bundle_master).manifest["exits"][1]
    graphs = {head["id"]: onnx.load(bundle_master + "/" + head["file"])}
    db = str(tmp_path / "db")
    result = tune(graphs, resolve_target(get_target("host").processor("cpu")), db, trials=2,
                  rpc=(host, int(port), "plain-tvm"), progress=False)
    state = json.load(open(db + "/" + PROGRESS_FILE))
    # The candidates ran on the board: it logged the sessions, and they measured fine.
    assert result["tuned"] >= 1 and all(t["ok"] >= 1 for t in state["tasks"].values())
    assert "connected from" in (logs / "plain.log").read_text()


def test_the_board_side_answers_any_failure_and_keeps_serving(monkeypatch, tmp_path):
    # A MemoryError (or any defect) while unpacking an upload becomes an error answer; the
    # server process that called the function does not die.
    import tvm
    from edgesdk import bundle_archive
    from edgesdk.runtime import rpc
    monkeypatch.setattr(tvm, "get_global_func", lambda name: lambda p: str(tmp_path / p))

    def exhausted(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(bundle_archive, "unpack_bundle", exhausted)
    answer = json.loads(rpc._remote_profile("bundle.tar", json.dumps({})))
    assert answer["error"].startswith("internal error on the board: MemoryError")
