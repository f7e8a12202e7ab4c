"""The standalone runtime zipapp runs bundles without the host SDK on the path."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np

from edgesdk.runtime_pack import pack_runtime


def test_zipapp_validates_and_runs_a_bundle(tmp_path, bundle_master, mnist_split):
    pyz = str(tmp_path / "edgesdk-runtime.pyz")
    pack_runtime(pyz)
    names = zipfile.ZipFile(pyz).namelist()
    assert "edgesdk/runtime/engine.py" in names and "__main__.py" in names
    assert not [n for n in names if n.startswith(("edgesdk/converters", "edgesdk/cli", "edgesdk/targets"))]
    _, (x, y) = mnist_split
    np.savez(str(tmp_path / "in.npz"), x=x[:20], y=y[:20])
    # Run from an empty directory; the zipapp's own edgesdk must be the one imported.
    env = dict(os.environ, PYTHONPATH="")
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                            "import edgesdk.runtime.engine as e; print(e.__file__)", pyz],
                           capture_output=True, text=True, cwd=str(tmp_path), env=env, check=True)
    assert probe.stdout.strip().startswith(pyz)
    val = subprocess.run([sys.executable, pyz, "validate", bundle_master, "--check", "--json"],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert val.returncode == 0, val.stderr
    assert json.loads(val.stdout)["reference"]["passed"]
    run = subprocess.run([sys.executable, pyz, "run", bundle_master, "in.npz", "--json"],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["summary"]["samples"] == 20
    bad = subprocess.run([sys.executable, pyz, "run", str(tmp_path / "nope.edgebundle"), "in.npz"],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert bad.returncode == 4 and "not a bundle directory" in bad.stderr
