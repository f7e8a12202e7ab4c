"""The packed device runtime on a real Python 3.6 with numpy 1.19.5 and onnxruntime 1.10.0,
what a Jetson TX2 (JetPack 4.6) runs, against the host runtime's results.

The Python 3.6 environment is a venv under the user's cache (``~/.cache/edgesdk-test-py36``,
or ``$XDG_CACHE_HOME``), keyed by the interpreter and the pinned wheels, built once with pip
from the package index. Without a Python 3.6 interpreter the test is skipped; a failing pip
(no index) is a failure: CI has PyPI.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgesdk import bundle as bundle_io
from edgesdk.runtime import load_bundle
from edgesdk.runtime.policies import get_policy
from edgesdk.runtime_pack import pack_runtime
from margins import threshold_with_margin

# The last pip for Python 3.6 reads the manylinux2014 tags of these wheels (3.6.15's own
# pip 18.1 does not); protobuf and flatbuffers are pinned to what onnxruntime 1.10 resolved to.
PIP = "pip==21.3.1"
PINS = ("numpy==1.19.5", "onnxruntime==1.10.0", "protobuf==3.19.6", "flatbuffers==25.12.19")
SAMPLES = 40


def _is_py36(path):
    try:
        out = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] == (3, 6))"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == b"True"


def find_python36():
    """A working Python 3.6 interpreter: pyenv's (``pyenv root``/versions/3.6*, also without
    pyenv on PATH), then ``python3.6`` on PATH (a pyenv shim may exist yet not run)."""
    roots = [os.path.expanduser("~/.pyenv")]
    pyenv = shutil.which("pyenv") or shutil.which(os.path.expanduser("~/.pyenv/bin/pyenv"))
    if pyenv:
        out = subprocess.run([pyenv, "root"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if out.returncode == 0 and out.stdout.strip():
            roots.insert(0, out.stdout.decode().strip())
    candidates = []
    for root in roots:
        candidates += sorted(glob.glob(os.path.join(root, "versions", "3.6*", "bin", "python3.6")),
                             reverse=True)
    if shutil.which("python3.6"):
        candidates.append(shutil.which("python3.6"))
    return next((c for c in candidates if _is_py36(c)), None)


def _cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "edgesdk-test-py36")


def py36_venv(python):
    """The cached venv's interpreter, built on first use (into a temporary directory renamed
    into place, so an interrupted build is never taken for a ready one)."""
    real = os.path.realpath(python)
    key = hashlib.sha256("\n".join((real, PIP) + PINS).encode()).hexdigest()[:12]
    final = os.path.join(_cache_root(), "venv-" + key)
    exe = os.path.join(final, "bin", "python")
    if os.path.exists(os.path.join(final, "edgesdk-pins.txt")) and os.path.exists(exe):
        return exe
    os.makedirs(_cache_root(), exist_ok=True)
    tmp = "{}.tmp-{}".format(final, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    steps = [[python, "-m", "venv", tmp],
             [os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "-q", PIP],
             [os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "-q"] + list(PINS)]
    for cmd in steps:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             timeout=900)
        if out.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.fail("building the Python 3.6 test venv failed ({}): {}\nThis test needs "
                        "pip access to the package index (PyPI)".format(
                            " ".join(cmd), out.stdout.decode(errors="replace")[-3000:]))
    with open(os.path.join(tmp, "edgesdk-pins.txt"), "w") as f:
        f.write("\n".join((real, PIP) + PINS) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)  # the venv runs through bin/python, which a move does not break
    return exe


@pytest.fixture(scope="module")
def py36():
    python = find_python36()
    if python is None:
        pytest.skip("no Python 3.6 interpreter (pyenv versions/3.6*, python3.6 on PATH): the "
                    "device runtime's Python 3.6 test needs one, e.g. `pyenv install 3.6.15`")
    return py36_venv(python)


def _device(py, *args, cwd):
    """Run the packed runtime on Python 3.6 without the host SDK on the path."""
    env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
    return subprocess.run([py] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, cwd=str(cwd), env=env,
                          timeout=600)


def test_packed_runtime_on_python36_matches_the_host(py36, tmp_path, bundle_master, mnist_split):
    versions = _device(py36, "-c", "import sys, numpy, onnxruntime; print(sys.version_info[:2], "
                       "numpy.__version__, onnxruntime.__version__)", cwd=tmp_path)
    assert versions.stdout.split() == ["(3,", "6)", "1.19.5", "1.10.0"], versions.stderr
    # Early exits set with a margin from every sample's score, so both runtimes make the
    # same decisions whatever their float rounding.
    _, (xc, yc) = mnist_split
    x, y = xc[:SAMPLES], yc[:SAMPLES]
    bundle = shutil.copytree(bundle_master, str(tmp_path / "tiny.edgebundle"))
    host = load_bundle(bundle)
    score = get_policy("max-softmax").score
    probs = host.exit_probabilities(x)
    thresholds = [threshold_with_margin(score(p), 0.5)[0] for p in probs[:-1]] + [None]

    def set_thresholds(m):
        for e, t in zip(m["exits"], thresholds):
            e["threshold"] = t
    bundle_io.update_manifest(bundle, set_thresholds)
    host = load_bundle(bundle)
    expected = host.run(x)
    counts = np.bincount(expected.exit_index, minlength=3)
    assert counts[0] > 0 and counts[1:].sum() > 0, "the thresholds must make samples exit early"
    np.savez(str(tmp_path / "in.npz"), x=x, y=y)
    pyz = str(tmp_path / "edgesdk-runtime.pyz")
    pack_runtime(pyz)

    val = _device(py36, pyz, "validate", bundle, "--check", "--json", cwd=tmp_path)
    assert val.returncode == 0, val.stderr
    assert json.loads(val.stdout)["reference"]["passed"]

    # Outputs saved by the device runtime compare with the host's on the same inputs.
    cmp = _device(py36, pyz, "compare", bundle, "--data", "in.npz", "--save-outputs",
                  "board.npz", cwd=tmp_path)
    assert cmp.returncode == 0, cmp.stderr
    from edgesdk.cli import main
    assert main(["compare", bundle, "--load-outputs", str(tmp_path / "board.npz")]) == 0

    run = _device(py36, pyz, "run", bundle, "in.npz", "--batch-size", "8", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    samples = json.loads(run.stdout)["samples"]
    assert [s["label"] for s in samples] == expected.labels.tolist()
    assert [s["exit"] for s in samples] == expected.exit_index.tolist()
    np.testing.assert_allclose([s["confidence"] for s in samples],
                               expected.probabilities.max(axis=1), atol=1e-5)

    prof = _device(py36, pyz, "profile", bundle, "--batch-sizes", "1,4", "--warmup", "1",
                   "--repeats", "3", "--data", "in.npz", "--no-sensor", "--db", "p.db", "--json",
                   "--per-layer", cwd=tmp_path)
    assert prof.returncode == 0, prof.stderr
    out = json.loads(prof.stdout)
    rows = {(r["graph"], r["batch"]): r for r in out["graphs"]}
    graphs = ["stage0", "exit0", "stage1", "exit1", "stage2", "exit2"]
    assert {(g, b) for g in graphs for b in (1, 4)} <= set(rows)
    assert all(rows[(g, b)]["mean_ms"] > 0 for g in graphs for b in (1, 4))
    e2e = out["end_to_end"]
    assert e2e["exit_counts"] == counts.tolist()
    assert e2e["accuracy"] == pytest.approx(float((expected.labels == y).mean()))
    # The database the device wrote reads on the host.
    from edgesdk.profiles import ProfileStore
    with ProfileStore(str(tmp_path / "p.db"), create=False) as store:
        assert {r["graph"] for r in store.rows()} >= set(graphs)
        # onnxruntime 1.10's session profile gives every graph's nodes too.
        assert {r["graph"] for r in store.layers()} == set(graphs)
    assert {r["op"] for r in out["layers"]} >= {"Conv"}


def test_every_runtime_module_imports_on_python36(py36, tmp_path):
    """Modules the bundle above does not exercise (TVM, TensorRT, PYNQ executors, RPC, power
    sensors, video) still import on Python 3.6: their heavy packages load only when used."""
    pyz = str(tmp_path / "edgesdk-runtime.pyz")
    names = pack_runtime(pyz)
    modules = sorted(n[:-3].replace("/", ".").replace(".__init__", "") for n in names
                     if n.endswith(".py") and n.startswith("edgesdk/") and "__main__" not in n)
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); bad = []\n"
            "for m in sys.argv[2:]:\n"
            "    try: importlib.import_module(m)\n"
            "    except Exception as e: bad.append('{}: {!r}'.format(m, e))\n"
            "print('\\n'.join(bad))")
    out = _device(py36, "-c", code, pyz, *modules, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr
    assert "edgesdk.runtime.executors.tvm" in modules and len(modules) > 30


def test_missing_onnxruntime_on_the_device_says_pip_install_onnxruntime(py36, tmp_path,
                                                                          bundle_master):
    pyz = str(tmp_path / "edgesdk-runtime.pyz")
    pack_runtime(pyz)
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
            "sys.argv = [sys.argv[1], 'validate', sys.argv[2], '--check']; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = _device(py36, "-c", code, pyz, bundle_master, cwd=tmp_path)
    assert out.returncode == 5, out.stderr
    assert "Install it with: pip install onnxruntime" in out.stderr and "edgesdk[" not in out.stderr


def test_int8_builds_load_on_onnxruntime_1_10(py36, tmp_path, trained_tiny, mnist_split):
    from edgesdk.converters import convert
    _, (xc, _) = mnist_split
    path = str(tmp_path / "int8.edgebundle")
    convert(trained_tiny, xc[:8], path, stages_attr="blocks", heads_attr="exits",
            precisions=["int8"], calibration_data=xc[:200], progress=False)
    pyz = str(tmp_path / "edgesdk-runtime.pyz")
    pack_runtime(pyz)
    out = _device(py36, pyz, "validate", path, "--check", "--builds", "int8", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
