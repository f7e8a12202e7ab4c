"""A missing optional package names the fix that works where the code runs: the SDK extra on
the host, the package itself on a device running the packed runtime."""
import os
import subprocess
import sys

import pytest

from edgesdk import deps
from edgesdk.errors import MissingDependencyError
from edgesdk.runtime_pack import pack_runtime


def test_host_message_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # makes the import fail
    assert deps.host_sdk_present()
    with pytest.raises(MissingDependencyError) as err:
        deps.require("onnxruntime", "onnx", "run ONNX stages")
    assert "is needed to run ONNX stages" in str(err.value)
    assert str(err.value).endswith("Install it with: pip install 'edgesdk[onnx]'")


def test_device_message_names_the_package(monkeypatch):
    monkeypatch.setattr(deps, "host_sdk_present", lambda: False)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.delitem(sys.modules, "PIL.Image", raising=False)  # imported by earlier tests
    with pytest.raises(MissingDependencyError, match="Install it with: pip install Pillow$"):
        deps.require("PIL.Image", "images", "read image folders")


def test_packed_runtime_says_pip_install_onnxruntime(tmp_path, bundle_master):
    """The zipapp on a machine where onnxruntime is missing (blocked here), even one that
    also has the host SDK installed: exit code 5 and the device's command."""
    pyz = str(tmp_path / "edgesdk-runtime.pyz")
    pack_runtime(pyz)
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
            "sys.argv = [sys.argv[1], 'validate', sys.argv[2], '--check']; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, pyz, bundle_master],
                         capture_output=True, text=True, cwd=str(tmp_path),
                         env=dict(os.environ, PYTHONPATH=""))
    assert out.returncode == 5, out.stderr
    assert "Install it with: pip install onnxruntime" in out.stderr
    assert "edgesdk[" not in out.stderr
