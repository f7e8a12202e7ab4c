"""Verify a bundle: manifest, every file's sha256 and, with --check, the reference outputs."""
from edgesdk.runtime.cli import add_validate_arguments as add_arguments  # noqa: F401
from edgesdk.runtime.cli import cmd_validate as run  # noqa: F401
