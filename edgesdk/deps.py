"""Import heavy optional packages inside the functions that need them, with a useful error.

The same helper runs on the host (the full SDK, installed with extras) and on the device (the
packed runtime, no host SDK): the fix it names differs, ``pip install 'edgesdk[onnx]'`` on
the host, ``pip install onnxruntime`` on a board. Python 3.6 compatible.
"""
import importlib
import importlib.util
import zipimport

from edgesdk.errors import MissingDependencyError

# pip's name where it differs from the import name (what a device installs by hand).
PIP_NAMES = {"PIL": "Pillow", "cv2": "opencv-python-headless", "tvm": "apache-tvm",
             "tvm_ffi": "apache-tvm-ffi"}


def host_sdk_present():
    """Whether this is the host SDK (its converters importable), as opposed to the device
    runtime: the packed .pyz (even when run on a machine that also has the SDK installed,
    whose import hooks would find ``edgesdk.converters``) or an unpacked runtime copy."""
    if isinstance(globals().get("__loader__"), zipimport.zipimporter):
        return False
    try:
        return importlib.util.find_spec("edgesdk.converters") is not None
    except (ImportError, ValueError):
        return False


def install_hint(module, extra):
    """The command that installs ``module``: the SDK extra on the host, the package itself
    on a device running the packed runtime."""
    top = module.split(".")[0]
    if host_sdk_present():
        return "pip install 'edgesdk[{}]'".format(extra)
    return "pip install {}".format(PIP_NAMES.get(top, top))


def require(module, extra, purpose):
    """Import and return ``module``; raise MissingDependencyError naming what to install.

    ``purpose`` completes the sentence "... is needed to <purpose>"; ``extra`` is the host
    SDK's extra that provides it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingDependencyError(
            "the Python package '{}' is needed to {} but cannot be imported ({}). "
            "Install it with: {}".format(top, purpose, exc, install_hint(module, extra)))
