"""Profiling many boards through Apache TVM's RPC tracker and servers.

Boards run TVM's own RPC server (``tvm.rpc.Server``, registered with a tracker under a key
such as ``jetson-tx2``) with one extra function, ``edgesdk.profile``, added through the
server's documented ``server_init_callback``: :func:`serve` / ``edgesdk rpc-server``. The
host asks the tracker for a free board of a key, uploads the bundle as a tar, calls the
function (the same :func:`~edgesdk.runtime.profiler.profile_bundle` as a local ``edgesdk
profile``, recording into a profile store in the session's work directory), downloads that
store and merges it into the local one: :func:`profile_remote`. TVM's protocol and tracker
do the transport and scheduling; nothing here speaks its own protocol.

TVM's RPC server executes what its clients send: run it on trusted networks only (TVM's
own warning). Python 3.6 compatible; needs only the TVM runtime on the board.
"""
import json
import os
import tempfile

from edgesdk.deps import require
from edgesdk.errors import EdgeSDKError, InputError, RemoteError

PROFILE_FUNCTION = "edgesdk.profile"
REMOTE_BUNDLE = "bundle.tar"
REMOTE_DATA = "data.npz"
REMOTE_DB = "profile.sqlite"


def parse_address(text, what="--rpc-tracker"):
    """``"HOST:PORT"`` -> ``("HOST", PORT)``."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("{} must be HOST:PORT (e.g. 127.0.0.1:9190), got '{}'".format(what, text))
    return host, int(port)


def _remote_profile(bundle_tar, options_json):
    """The board side of :func:`profile_remote`; runs inside a TVM RPC server session.

    Errors go back to the client as the message of a JSON ``{"error": ...}`` result, so an
    EdgeSDKError on the board reads the same as one on the host.
    """
    from edgesdk.bundle_archive import unpack_bundle
    from edgesdk.runtime.profiler import profile_bundle
    tvm = require("tvm", "tvm", "serve profiling over TVM RPC")
    workpath = tvm.get_global_func("tvm.rpc.server.workpath")
    try:
        opts = json.loads(options_json)
        bundle = unpack_bundle(workpath(bundle_tar), workpath("bundle.edgebundle"), force=True)
        out = profile_bundle(bundle.root, opts["batch_sizes"], opts["warmup"], opts["repeats"],
                             db=workpath(REMOTE_DB),
                             data=workpath(opts["data"]) if opts.get("data") else None,
                             no_sensor=opts["no_sensor"], threads=opts.get("threads"),
                             progress=False)
        out["db"] = REMOTE_DB
        return json.dumps(out)
    except EdgeSDKError as exc:
        return json.dumps({"error": "{}: {}".format(type(exc).__name__, exc)})
    except Exception as exc:  # MemoryError, a defect: answer, and keep serving
        return json.dumps({"error": "internal error on the board: {}: {}".format(
            type(exc).__name__, exc)})


def register_functions():
    """Add edgesdk's functions to this process's TVM global functions (the server callback)."""
    tvm = require("tvm", "tvm", "serve profiling over TVM RPC")
    tvm.register_global_func(PROFILE_FUNCTION, _remote_profile, override=True)


def serve(tracker, key, host="0.0.0.0", port=9091, port_end=9199, custom_addr=None, silent=False):
    """Run TVM's RPC server with edgesdk's functions, registered with the tracker under ``key``.

    Blocks until the server process ends.
    """
    tvm = require("tvm", "tvm", "serve profiling over TVM RPC")
    require("cloudpickle", "tvm", "start TVM's RPC server")
    if not key:
        raise InputError("give the board's key (--key), e.g. jetson-tx2")
    # The callback is pickled by reference into TVM's server process: take it from the
    # imported module (not a copy under __main__), and let that process import
    # edgesdk from where this one did (a site-packages dir or the standalone .pyz).
    import edgesdk
    from edgesdk.runtime import rpc
    root = os.path.dirname(os.path.dirname(os.path.abspath(edgesdk.__file__)))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p != root])
    server = tvm.rpc.Server(host, port, port_end, tracker_addr=parse_address(tracker, "--tracker"),
                            key=key, custom_addr=custom_addr, silent=silent,
                            server_init_callback=rpc.register_functions)
    server.proc.join()


def _session(tracker, key, priority, session_timeout):
    import socket
    tvm = require("tvm", "tvm", "profile boards over TVM RPC")
    host, port = parse_address(tracker)
    try:
        # TVM's own connect retries for a minute; a tracker that is not there is said at once.
        socket.create_connection((host, port), timeout=10).close()
        client = tvm.rpc.connect_tracker(host, port)
    except Exception as exc:  # TVM raises plain RuntimeError/socket errors
        raise RemoteError("cannot reach the RPC tracker at {}: {}".format(tracker, exc))
    keys = sorted(client.summary().get("queue_info", {}))
    if key not in keys:
        raise RemoteError("the tracker at {} has no board with key '{}'; keys it knows: {}".format(
            tracker, key, ", ".join(keys) or "none (no server registered)"))
    try:
        return client.request(key, priority=priority, session_timeout=session_timeout)
    except Exception as exc:
        raise RemoteError("no board with key '{}' could be reserved through {}: {}".format(
            key, tracker, exc))


def profile_remote(bundle_path, tracker, key, batch_sizes=(1,), warmup=10, repeats=50, db=None,
                   data=None, no_sensor=False, threads=None, priority=1, session_timeout=0):
    """Profile a bundle on a free board of ``key`` reserved through the tracker at ``tracker``.

    Same measurements as a local ``edgesdk profile``; the board's rows (and labelled
    end-to-end run) are merged into the local store ``db`` (the newer of duplicate rows
    kept). Returns the board's result dict, with ``merged_rows`` and ``served_by``.
    """
    from edgesdk.bundle_archive import pack_bundle
    from edgesdk.profiles import ProfileStore, merge_into
    tar = pack_bundle(bundle_path)
    options = {"batch_sizes": [int(b) for b in batch_sizes], "warmup": int(warmup),
               "repeats": int(repeats), "no_sensor": bool(no_sensor), "threads": threads,
               "data": REMOTE_DATA if data else None}
    if data and not os.path.isfile(data):
        raise InputError("--data must be an .npz file for remote profiling, got '{}'".format(data))
    remote = _session(tracker, key, priority, session_timeout)
    try:
        remote.upload(bytearray(tar), REMOTE_BUNDLE)
        if data:
            with open(data, "rb") as f:
                remote.upload(bytearray(f.read()), REMOTE_DATA)
        try:
            func = remote.get_function(PROFILE_FUNCTION)
        except Exception:
            raise RemoteError("the board serving key '{}' has no {} function: start it with "
                              "`edgesdk rpc-server` (or python3 edgesdk-runtime.pyz rpc-server), "
                              "not plain tvm.exec.rpc_server".format(key, PROFILE_FUNCTION))
        out = json.loads(str(func(REMOTE_BUNDLE, json.dumps(options))))
        if "error" in out:
            raise RemoteError("profiling on the board failed: {}".format(out["error"]))
        db_bytes = bytes(remote.download(out["db"]))
    except EdgeSDKError:
        raise
    except Exception as exc:
        raise RemoteError("RPC session with a '{}' board failed: {}".format(key, exc))
    out["served_by"] = key
    out["merged_rows"] = 0
    if db:
        fd, tmp = tempfile.mkstemp(suffix=".sqlite")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(db_bytes)
            with ProfileStore(db) as store:
                out["merged_rows"] = merge_into(store, tmp)
        finally:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(tmp + suffix):
                    os.remove(tmp + suffix)
    return out
