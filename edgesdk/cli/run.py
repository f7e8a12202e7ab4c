"""Run a bundle stage by stage with early exits over an .npz (x, optional y) or image folder."""
from edgesdk.runtime.cli import add_run_arguments as add_arguments  # noqa: F401
from edgesdk.runtime.cli import cmd_run as run  # noqa: F401
