"""Serve this board to a TVM RPC tracker so hosts can profile bundles on it
(`edgesdk profile BUNDLE --rpc-tracker HOST:PORT --key KEY`). TVM's own RPC server runs code
sent by its clients: use it on trusted networks only."""
from edgesdk.runtime.rpc import add_server_arguments as add_arguments  # noqa: F401
from edgesdk.runtime.rpc import cmd_rpc_server as run  # noqa: F401
