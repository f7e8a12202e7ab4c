"""Shared fixtures: tiny models converted once per session into temporary directories."""
import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

PREPROCESSING = {"scale": 1.0 / 255.0, "mean": [0.1307], "std": [0.3081]}


@pytest.fixture(scope="session")
def mnist_split():
    """(train, calibration) splits of real MNIST digits."""
    from models import mnist
    return mnist(2000), mnist(600, offset=2000)


@pytest.fixture(scope="session")
def trained_tiny(mnist_split):
    """A TinyNet trained for a few seconds on 2000 real digits."""
    import torch
    from models import TinyNet, train_quickly
    torch.manual_seed(0)
    (x, y), _ = mnist_split
    return train_quickly(TinyNet(), x, y)


@pytest.fixture(scope="session")
def bundle_master(tmp_path_factory, trained_tiny, mnist_split):
    """A converted bundle of the trained TinyNet; copy it (``bundle``) before changing it."""
    from edgesdk.converters import convert
    _, (xc, _) = mnist_split
    out = tmp_path_factory.mktemp("bundles") / "tiny.edgebundle"
    convert(trained_tiny, xc[:8], str(out), stages_attr="blocks", heads_attr="exits",
            preprocessing=PREPROCESSING, progress=False)
    return str(out)


@pytest.fixture
def bundle(tmp_path, bundle_master):
    """A private copy of the converted bundle."""
    dst = tmp_path / "tiny.edgebundle"
    shutil.copytree(bundle_master, dst)
    return str(dst)


@pytest.fixture(scope="session")
def tx2_master(tmp_path_factory, trained_tiny, mnist_split):
    """The trained TinyNet converted for the Jetson TX2 with symmetric INT8 builds (FP16
    selected); copy it (``tx2_bundle``) before changing it."""
    from edgesdk.converters import convert
    _, (xc, yc) = mnist_split
    out = tmp_path_factory.mktemp("bundles") / "tiny-tx2.edgebundle"
    convert(trained_tiny, xc[:8], str(out), stages_attr="blocks", heads_attr="exits",
            target="jetson-tx2", precisions=["int8"], calibration_data=(xc, yc),
            preprocessing=PREPROCESSING, progress=False)
    return str(out)


@pytest.fixture
def tx2_bundle(tmp_path, tx2_master):
    """A private copy of the TX2 bundle."""
    dst = tmp_path / "tiny-tx2.edgebundle"
    shutil.copytree(tx2_master, dst)
    return str(dst)


def cli(capsys, *argv):
    """Run ``edgesdk ARGV...`` in-process; returns ``(exit code, stdout, stderr)``."""
    from edgesdk.cli import main
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root):
    """{relative path: bytes} of every file under ``root`` (to prove nothing changed)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out
