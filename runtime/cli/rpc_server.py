"""Serve this board to a TVM RPC tracker so hosts can profile bundles on it
(`edgesdk profile BUNDLE --rpc-tracker HOST:PORT --key KEY`). TVM's own RPC server runs code
sent by its clients: use it on trusted networks only.

``python3 -m edgesdk.runtime.cli.rpc_server`` is the same as ``edgesdk rpc-server``.
"""
from edgesdk.runtime.rpc import serve


def add_arguments(p):
    p.add_argument("--tracker", required=True, help="the RPC tracker, HOST:PORT")
    p.add_argument("--key", required=True, help="this board's kind, e.g. jetson-tx2")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9091, help="first port to try (default 9091)")
    p.add_argument("--port-end", type=int, default=9199, help="last port to try (default 9199)")
    p.add_argument("--custom-addr", help="address to report to the tracker (behind NAT)")
    p.add_argument("--silent", action="store_true", help="log errors only")


def run(args):
    """Serve this board until interrupted."""
    serve(args.tracker, args.key, args.host, args.port, args.port_end, args.custom_addr, args.silent)
    return 0


def main(argv=None):
    """Parse the arguments and serve."""
    import argparse
    from edgesdk.runtime.cli.command import run_command
    p = argparse.ArgumentParser(prog="edgesdk rpc-server", description=serve.__doc__.splitlines()[0])
    add_arguments(p)
    return run_command(run, p.parse_args(argv), "edgesdk rpc-server")


if __name__ == "__main__":
    import sys
    sys.exit(main())
