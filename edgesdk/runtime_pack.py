"""Pack the device runtime into one self-contained Python zipapp (.pyz).

A board needs only Python 3.6+, numpy and the bundle's executor backend (onnxruntime): no
host SDK, no torch, no pip install of edgesdk. ``python3 edgesdk-runtime.pyz run B x.npz``.
"""
import ast
import os
import shutil
import tempfile
import zipapp

import edgesdk



def _imports(path):
    """Every module an ``import`` in ``path`` names, at any depth (function-level too)."""
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for alias in node.names:   # ``from edgesdk import errors`` names a module
                yield node.module + "." + alias.name


def core_modules():
    """The files of ``edgesdk/`` (the core) that the runtime needs: read from the imports of
    every file under ``runtime/`` and, transitively, of the core files they reach, so the list
    cannot drift from the code. Sorted names relative to ``edgesdk/``."""
    import edgesdk.runtime as runtime
    core_dir = os.path.dirname(edgesdk.__file__)
    runtime_dir = os.path.dirname(runtime.__file__)
    todo = [os.path.join(d, f) for d, _, fs in os.walk(runtime_dir) for f in fs if f.endswith(".py")]
    found = {"__init__.py"}
    todo.append(os.path.join(core_dir, "__init__.py"))
    while todo:
        for name in _imports(todo.pop()):
            parts = name.split(".")
            if parts[0] != "edgesdk" or len(parts) < 2 or parts[1] == "runtime":
                continue
            rel = parts[1] + ".py"
            if rel not in found and os.path.isfile(os.path.join(core_dir, rel)):
                found.add(rel)
                todo.append(os.path.join(core_dir, rel))
    return sorted(found)


def pack_runtime(output):
    """Write the zipapp to ``output``; returns the list of modules it holds."""
    import edgesdk.runtime as runtime
    core_dir = os.path.dirname(edgesdk.__file__)
    runtime_dir = os.path.dirname(runtime.__file__)
    stage = tempfile.mkdtemp(prefix="edgesdk-runtime-")
    try:
        pkg = os.path.join(stage, "edgesdk")
        os.makedirs(pkg)
        for name in core_modules():
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
