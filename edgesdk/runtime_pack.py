"""Pack the device runtime into one self-contained Python zipapp (.pyz).

A board needs only Python 3.6+, numpy and the bundle's executor backend (onnxruntime): no
host SDK, no torch, no pip install of edgesdk. ``python3 edgesdk-runtime.pyz run B x.npz``.
"""
import os
import tempfile
import zipapp
import shutil

import edgesdk

# The core contracts the runtime imports; everything under runtime/ is added too.
CORE_MODULES = ("__init__.py", "errors.py", "deps.py", "registry.py", "progress.py",
                "manifest.py", "atomic.py", "bundle.py", "bundle_archive.py", "table.py", "profiles.py")


def pack_runtime(output):
    """Write the zipapp to ``output``; returns the list of modules it holds."""
    import edgesdk.runtime as runtime
    core_dir = os.path.dirname(edgesdk.__file__)
    runtime_dir = os.path.dirname(runtime.__file__)
    stage = tempfile.mkdtemp(prefix="edgesdk-runtime-")
    try:
        pkg = os.path.join(stage, "edgesdk")
        os.makedirs(pkg)
        for name in CORE_MODULES:
            shutil.copy2(os.path.join(core_dir, name), pkg)
        shutil.copytree(runtime_dir, os.path.join(pkg, "runtime"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with open(os.path.join(stage, "__main__.py"), "w") as f:
            f.write("import sys\nfrom edgesdk.runtime.cli import main\nsys.exit(main())\n")
        out_dir = os.path.dirname(os.path.abspath(output))
        os.makedirs(out_dir, exist_ok=True)
        tmp_out = output + ".tmp"
        zipapp.create_archive(stage, tmp_out, interpreter="/usr/bin/env python3")
        os.replace(tmp_out, output)
        return sorted(os.path.relpath(os.path.join(d, f), stage)
                      for d, _, fs in os.walk(stage) for f in fs)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
