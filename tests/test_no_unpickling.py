"""Nothing in the SDK unpickles data: bundles and profile stores hold JSON, SQLite, ONNX and
.npz (read with allow_pickle=False); torch.load only with weights_only=True. A scan of the
source, so a new call site that could run code from a file fails here."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = ("edgesdk", "converters", "runtime", "targets", "samples", "benchmarks", "fuzz")
# Modules whose load functions unpickle (or run code) by design.
UNSAFE_MODULES = ("pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve",
                  "marshal")


def _sources():
    for folder in FOLDERS:
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(d, f)


def _name(node):
    """Dotted name of a call's function (``np.load``, ``torch.load``), or ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call, name):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "missing"


def unsafe_calls(path):
    """``(line, why)`` for every call in ``path`` that could unpickle."""
    tree = ast.parse(open(path).read(), path)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, last = name.rpartition(".")
        if last in ("load", "loads", "Unpickler", "open") and head in UNSAFE_MODULES:
            found.append((node.lineno, name))
        elif name == "torch.load" and _keyword(node, "weights_only") is not True:
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif name in ("np.load", "numpy.load") and _keyword(node, "allow_pickle") is not False:
            found.append((node.lineno, "np.load without allow_pickle=False"))
        elif name in ("yaml.load", "yaml.unsafe_load"):
            found.append((node.lineno, name))
    return found


def test_no_source_file_unpickles():
    bad = {os.path.relpath(p, ROOT): calls for p in _sources() for calls in [unsafe_calls(p)]
           if calls}
    assert bad == {}


def test_the_scan_finds_what_it_looks_for(tmp_path):
    p = tmp_path / "bad.py"
    p.write_text("import pickle, torch, numpy as np\npickle.loads(b'')\ntorch.load('w')\n"
                 "torch.load('w', weights_only=True)\nnp.load('a.npz')\n"
                 "np.load('a.npz', allow_pickle=False)\n")
    assert [line for line, _ in unsafe_calls(str(p))] == [2, 3, 5]
