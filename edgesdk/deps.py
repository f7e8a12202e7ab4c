"""Import heavy optional packages inside the functions that need them, with a useful error."""
import importlib

from edgesdk.errors import MissingDependencyError


def require(module, extra, purpose):
    """Import and return ``module``; raise MissingDependencyError naming the extra to install.

    ``purpose`` completes the sentence "... is needed to <purpose>".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependencyError(
            "the Python package '{}' is needed to {} but cannot be imported ({}). "
            "Install it with: pip install 'edgesdk[{}]'".format(top, purpose, exc, extra))
