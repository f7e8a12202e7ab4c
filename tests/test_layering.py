"""Layering: the device runtime imports no host code and stays Python 3.6 compatible."""
import ast
import os
import shutil
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "onnx", "onnxruntime", "tvm", "tensorrt", "hls4ml", "cv2", "PIL", "matplotlib")
HOST = ("edgesdk.converters", "edgesdk.targets", "edgesdk.cli")
# The core modules the runtime imports (also what the standalone runtime zipapp carries).
from edgesdk.runtime_pack import core_modules  # noqa: E402


def _modules_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_importing_the_runtime_pulls_in_no_host_code_or_heavy_packages():
    mods = _modules_after("import edgesdk.runtime")
    assert not {m for m in mods if m.split(".")[0] in HEAVY}
    assert not {m for m in mods if m.startswith(HOST)}


def test_import_edgesdk_and_cli_help_are_cheap():
    mods = _modules_after("import edgesdk, edgesdk.cli; edgesdk.cli.build_parser()")
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def _runtime_files():
    files = [os.path.join(ROOT, "edgesdk", m) for m in core_modules()]
    for d, _, names in os.walk(os.path.join(ROOT, "runtime")):
        files += [os.path.join(d, n) for n in names if n.endswith(".py")]
    return files


def _sources(*packages):
    for pkg in packages:
        for d, _, names in os.walk(os.path.join(ROOT, pkg)):
            for n in names:
                if n.endswith(".py"):
                    yield os.path.join(d, n)


def test_runtime_sources_never_import_host_packages():
    for path in _runtime_files():
        bad = [m for m in _imports(path) if m.startswith(HOST)]
        assert not bad, "{} imports {}".format(path, bad)


def test_converters_and_targets_do_not_import_the_cli():
    for path in _sources("converters", "targets"):
        assert not [m for m in _imports(path) if m.startswith("edgesdk.cli")], path


def test_every_error_class_lives_in_errors_py():
    found = []
    for path in _sources("edgesdk", "converters", "targets", "runtime"):
        if os.path.relpath(path, ROOT) == os.path.join("edgesdk", "errors.py"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception", "Warning"))
                    for b in node.bases):
                found.append("{}: {}".format(os.path.relpath(path, ROOT), node.name))
    assert not found


def test_the_packed_core_is_every_core_module_the_runtime_imports():
    # Import every runtime module and compare the core modules loaded with what the zipapp
    # carries (derived from the sources' import statements).
    names = []
    for path in _sources("runtime"):
        rel = os.path.relpath(path, os.path.join(ROOT, "runtime"))[:-3].split(os.sep)
        if rel[-1] == "__init__":
            rel = rel[:-1]
        if rel != ["__main__"]:
            names.append(".".join(["edgesdk", "runtime"] + rel))
    mods = _modules_after("import importlib\nfor n in {!r}: importlib.import_module(n)".format(names))
    core = {m.split(".")[1] + ".py" for m in mods
            if m.startswith("edgesdk.") and m.split(".")[1] != "runtime"}
    assert core and core <= set(core_modules())
    assert "errors.py" in core_modules() and "bundle.py" in core_modules()


def test_runtime_is_python36_compatible():
    vermin = shutil.which("vermin", path=os.path.dirname(sys.executable)) or shutil.which("vermin")
    assert vermin, "vermin is part of the dev extra (make test installs it)"
    proc = subprocess.run([vermin, "-t=3.6-", "--no-tips", "--violations", "--eval-annotations"]
                          + _runtime_files(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Minimum required versions" in proc.stdout


def test_every_package_directory_is_installed():
    # A package missing from pyproject's list imports from a checkout but not from a wheel.
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    roots = {"edgesdk": "edgesdk", "converters": "edgesdk.converters",
             "targets": "edgesdk.targets", "runtime": "edgesdk.runtime"}
    found = set()
    for top, package in roots.items():
        for d, _, names in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in names:
                rel = os.path.relpath(d, os.path.join(ROOT, top))
                found.add(package if rel == "." else package + "." + rel.replace(os.sep, "."))
    assert found == listed


def test_no_test_folder_shadows_a_backend_library():
    # tests/ folders are on sys.path while pytest runs: one named like a library (tensorrt,
    # tvm, pynq) would import as an empty namespace package where the library is missing.
    libraries = {"tensorrt", "tvm", "pynq", "onnxruntime", "hls4ml", "torch", "onnx", "cv2"}
    for d, dirs, _ in os.walk(os.path.join(ROOT, "tests")):
        assert not libraries & set(dirs), d


def _backends():
    """``{backend: module prefixes}``: each backend's executors (from the formats table) and
    its converter folder (from the toolchains table), plus the modules listed here that
    belong to one although they live elsewhere."""
    from edgesdk.backends import _EXECUTORS, TOOLCHAIN_FORMATS, TOOLCHAINS
    executor = dict((fmt, target.split(":")[0]) for fmt, target in _EXECUTORS)
    out = {}
    for name, formats in TOOLCHAIN_FORMATS.items():
        out[name] = [executor[f] for f in formats] + ["edgesdk.converters." + name]
    folders = {name: cls.split(":")[0].rsplit(".", 1)[0] for name, cls, _ in TOOLCHAINS}
    assert all(folders[n] == "edgesdk.converters." + n for n in folders)
    # Verbs that exist for one backend, and TensorRT's engine builder on the board.
    out["tvm"] += ["edgesdk.cli.tune"]
    out["hls4ml"] += ["edgesdk.cli.hls_reports"]
    out["tensorrt"] += ["edgesdk.runtime.executors.tensorrt_build",
                        "edgesdk.runtime.cli.build_engines", "edgesdk.runtime.cli.register_engines"]
    return out


def _imported_names(path):
    """Every module ``path`` imports, and ``module.name`` for each ``from module import name``
    (which may be a submodule)."""
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            for a in node.names:
                yield node.module + "." + a.name


def _module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    top = {"edgesdk": [], "converters": ["converters"], "targets": ["targets"],
           "runtime": ["runtime"]}[rel[0]]
    parts = ["edgesdk"] + top + rel[1:] if rel[0] != "edgesdk" else rel
    return ".".join(p for p in parts if p != "__init__")


def test_backends_are_imported_only_through_the_registry():
    # A backend's modules import each other; everything else reaches a backend through
    # edgesdk.backends. The one exception is ONNX Runtime as the reference: every bundle
    # keeps FP32 ONNX graphs, and converters check their rewrites against ONNX Runtime
    # sessions (make_session) and write INT8/FP16 ONNX builds with its quantizer.
    backends = _backends()
    reference = ("edgesdk.runtime.executors.ort", "edgesdk.converters.onnxruntime")

    def owner(module):
        return next((b for b, prefixes in backends.items()
                     if any(module == p or module.startswith(p + ".") for p in prefixes)), None)
    bad = []
    for path in _sources("edgesdk", "converters", "targets", "runtime"):
        mine = owner(_module_of(path))
        for imported in _imported_names(path):
            theirs = owner(imported)
            if theirs is None or theirs == mine:
                continue
            if theirs == "onnxruntime" and _module_of(path).startswith("edgesdk.converters") \
                    and imported.startswith(reference):
                continue
            bad.append("{} imports {}".format(os.path.relpath(path, ROOT), imported))
    assert not bad, "\n".join(bad)
    assert owner("edgesdk.converters.tvm.build") == "tvm"   # the table is not empty
    assert owner("edgesdk.runtime.executors.pynq") == "hls4ml"
