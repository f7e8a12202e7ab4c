"""No silent input traps: weights, scale and raw pixels taken as model input."""
import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

from conftest import cli
from edgesdk.cli import main
from edgesdk.runtime import load_bundle, preprocess
from edgesdk.runtime.input_stats import InputGuard, InputRangeWarning, summarize

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(HERE, "models.py") + ":TinyNet"


@pytest.fixture(scope="module")
def weights(tmp_path_factory, trained_tiny):
    path = tmp_path_factory.mktemp("traps") / "w.pt"
    torch.save(trained_tiny.state_dict(), str(path))
    return path


def _raw(x):
    """The MNIST test images as 0..255 pixels (what the model was normalized from)."""
    return np.clip(x[:, 0] * 0.3081 + 0.1307, 0, 1) * 255.0


def test_convert_needs_weights_or_an_explicit_random_choice(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "--model", MODEL, "--input-shape", "1,28,28", "-o",
              str(tmp_path / "x.edgebundle")])
    assert e.value.code == 2
    assert "--weights" in capsys.readouterr().err and not (tmp_path / "x.edgebundle").exists()


def test_scale_is_a_fraction_and_never_assumed_for_non_8_bit_pixels(weights, mnist_split,
                                                                    tmp_path, capsys):
    _, (x, y) = mnist_split
    sixteen = np.round(_raw(x[:64]) / 255.0 * 16.0)  # float64 0..16 pixels, as sklearn's digits
    data = tmp_path / "d16.npz"
    np.savez(str(data), x=sixteen.astype(np.int64), y=y[:64])
    common = ["convert", "--model", MODEL, "--weights", weights, "--stages-attr", "blocks",
              "--heads-attr", "exits", "--example-data", data, "--mean", "0.1307", "--std",
              "0.3081"]
    code, _, err = cli(capsys, *common, "-o", tmp_path / "a.edgebundle")
    assert code == 4 and "give --scale" in err and "--scale 1/16" in err
    assert not (tmp_path / "a.edgebundle").exists()
    code, out, _ = cli(capsys, *common, "--scale", "1/16", "-o", tmp_path / "b.edgebundle", "--json")
    assert code == 0
    manifest = json.loads((tmp_path / "b.edgebundle" / "manifest.json").read_text())
    spec = manifest["inputs"][0]
    assert spec["preprocessing"]["scale"] == 1 / 16
    stats = spec["statistics"]
    assert stats["samples"] == 16 and len(stats["mean"]) == 1
    assert stats["min"][0] == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    with pytest.raises(SystemExit):
        main([str(a) for a in common] + ["--scale", "1/0", "-o", str(tmp_path / "c.edgebundle")])
    assert "fraction" in capsys.readouterr().err


def test_8_bit_pixels_default_to_1_over_255_and_say_so(weights, mnist_split, tmp_path, capsys):
    _, (x, y) = mnist_split
    data = tmp_path / "u8.npz"
    np.savez(str(data), x=np.round(_raw(x[:32])).astype(np.uint8), y=y[:32])
    code, out, err = cli(capsys, "convert", "--model", MODEL, "--weights", weights,
                         "--stages-attr", "blocks", "--heads-attr", "exits", "--example-data",
                         data, "--mean", "0.1307", "--std", "0.3081", "-o", tmp_path / "u.edgebundle")
    assert code == 0 and "--scale 1/255" in err
    assert "integer pixels are preprocessed as (raw * 0.00392157" in out
    assert "the runtime warns on batches far outside it" in out
    code, out, _ = cli(capsys, "inspect", tmp_path / "u.edgebundle")
    assert code == 0 and "input rule: float32 is taken as model-ready; integer pixels" in out
    assert "model input of the example input (16 samples)" in out


def test_raw_float_pixels_warn_once_and_model_input_does_not(bundle_master, mnist_split):
    _, (x, _) = mnist_split
    model = load_bundle(bundle_master)
    assert model.input_spec["statistics"]["samples"] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run(x[:8])   # real model input: no warning
        model.run(preprocess(np.round(_raw(x[8:16])).astype(np.uint8), model.input_spec))
    raw16 = (_raw(x[:8]) / 255.0 * 16.0)[:, None].astype(np.float64)
    with pytest.warns(InputRangeWarning, match="far outside.*preprocess"):
        model.run(raw16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run(raw16)   # once per loaded model


def test_the_cli_prints_the_warning(bundle_master, mnist_split, tmp_path, capsys):
    _, (x, y) = mnist_split
    path = tmp_path / "raw.npz"
    np.savez(str(path), x=_raw(x[:10])[:, None].astype(np.float32), y=y[:10])
    code, _, err = cli(capsys, "run", bundle_master, path)
    assert code == 0 and "far outside" in err


def test_guard_statistics_are_per_channel():
    ramp = np.linspace(0.0, 1.0, 4 * 25).reshape(4, 5, 5)
    x = np.stack([ramp, 2.0 + 2.0 * ramp], axis=1)   # channel 0 in 0..1, channel 1 in 2..4
    s = summarize(x, "test")
    assert s["min"] == [0.0, 2.0] and s["max"] == [1.0, 4.0]
    assert s["mean"] == pytest.approx([0.5, 3.0])
    guard = InputGuard({"name": "x", "statistics": s, "preprocessing": None})
    # A margin of one recorded range beyond the extremes: -1..6 passes, 7 does not.
    assert guard.check(np.full((1, 2, 5, 5), 5.5, np.float32)) is None
    assert guard.check(np.full((1, 2, 5, 5), -0.9, np.float32)) is None
    with pytest.warns(InputRangeWarning):
        assert "far outside" in guard.check(np.full((1, 2, 5, 5), 7.0, np.float32))


def test_an_infinite_memory_limit_and_a_0d_input_are_user_errors(bundle, tmp_path, capsys):
    data = str(tmp_path / "zero_d.npz")
    np.savez(data, x=np.float32(3.0))
    code, _, err = cli(capsys, "run", bundle, data)
    assert code == 4 and "'x' is a single number" in err
    good = str(tmp_path / "x.npz")
    np.savez(good, x=np.zeros((2, 1, 28, 28), np.float32))
    code, _, err = cli(capsys, "run", bundle, good, "--memory-limit-mb", "inf")
    assert code == 4 and "positive, finite number" in err


def test_image_bombs_are_user_errors(bundle, tmp_path, capsys, monkeypatch):
    from PIL import Image
    from edgesdk.runtime import datafiles
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("L", (64, 64)).save(str(folder / "a.png"))
    monkeypatch.setattr(datafiles, "MAX_IMAGE_PIXELS", 1000)      # our check, on the header
    code, _, err = cli(capsys, "run", bundle, str(folder))
    assert code == 4 and "64x64 pixels, more than the 1000" in err
    monkeypatch.setattr(datafiles, "MAX_IMAGE_PIXELS", 1 << 30)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)          # Pillow's own refusal
    code, _, err = cli(capsys, "run", bundle, str(folder))
    assert code == 4 and "cannot read image a.png" in err


def _manifest_number(text, key, value):
    """``text`` (manifest.json) with the first integer ``key`` set to the literal ``value``."""
    return re.sub(r'("{}": )-?\d+'.format(key), r"\g<1>" + value, text, count=1)


@pytest.mark.parametrize("change, message", [
    (lambda t: _manifest_number(t, "activation_bytes_per_sample", "1e400"),
     r"\$\.memory\.activation_bytes_per_sample: expected an integer"),
    (lambda t: _manifest_number(t, "macs", "1e400"), r"\.macs: expected an integer"),
    (lambda t: t.replace('"class_names": null', '"class_names": ["a"]'),
     r"\$\.class_names: expected null or 10 strings"),
    (lambda t: t.replace('"class_names": null', '"class_names": "abc"'),
     r"\$\.class_names: expected a list or null, got str"),
])
def test_numbers_and_names_no_reader_expects_are_one_line_errors(bundle, tmp_path, capsys,
                                                                 change, message):
    path = os.path.join(str(bundle), "manifest.json")
    with open(path) as f:
        text = f.read()
    changed = change(text)
    assert changed != text
    with open(path, "w") as f:
        f.write(changed)
    good = str(tmp_path / "x.npz")
    np.savez(good, x=np.zeros((2, 1, 28, 28), np.float32))
    for argv in (("inspect", bundle), ("run", bundle, good), ("validate", bundle)):
        code, _, err = cli(capsys, *argv)
        assert code == 4 and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and re.search(message, err)


def test_bounds_that_are_not_finite_numbers_are_input_errors(bundle):
    from edgesdk.errors import InputError
    model = load_bundle(bundle)
    x = np.zeros((2, 1, 28, 28), np.float32)
    for bound in ({"deadline_ms": 1e400}, {"budget_ms": float("nan")}, {"max_exit": 1e400},
                  {"deadline_ms": "5"}, {"thresholds": [1e400, None, None]}):
        with pytest.raises(InputError):
            model.run(x, **bound)
