"""Input files: .npz with raw or model-ready arrays, folders of images."""
import numpy as np
import pytest

from edgesdk.errors import InputError
from edgesdk.runtime.datafiles import load_inputs
from edgesdk.runtime.inputs import preprocess

SPEC = {"name": "x", "dtype": "float32", "shape": [None, 1, 28, 28],
        "preprocessing": {"scale": 1 / 255.0, "mean": [0.5], "std": [0.25]}}


def test_preprocess_layouts_agree():
    raw = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    a = preprocess(raw, SPEC)
    assert a.shape == (3, 1, 28, 28) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, 0], (raw / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(preprocess(raw[..., None], SPEC), a)
    np.testing.assert_array_equal(preprocess(raw[:, None], SPEC), a)
    with pytest.raises(InputError, match="3 channel"):
        preprocess(np.zeros((1, 28, 28, 3), np.uint8), SPEC)


def test_npz_raw_and_float(tmp_path):
    raw = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    np.savez(tmp_path / "raw.npz", x=raw, y=np.arange(4))
    x, y, names = load_inputs(str(tmp_path / "raw.npz"), SPEC)
    assert x.shape == (4, 1, 28, 28) and y.tolist() == [0, 1, 2, 3] and names == ["0", "1", "2", "3"]
    np.savez(tmp_path / "f.npz", x=x)
    x2, y2, _ = load_inputs(str(tmp_path / "f.npz"), SPEC)
    np.testing.assert_array_equal(x2, x)
    assert y2 is None


@pytest.mark.parametrize("make, message", [
    (lambda p: np.savez(p, inputs=np.zeros(3)), "needs 'x'"),
    (lambda p: open(p, "wb").write(b"not a zip"), "cannot read"),
    (lambda p: np.savez(p, x=np.zeros((2, 1, 28, 28), np.float32), y=np.zeros(3, np.int64)),
     "one per sample"),
    (lambda p: np.savez(p, x=np.array([object()], dtype=object)), "cannot read"),
])
def test_bad_npz(tmp_path, make, message):
    path = str(tmp_path / "bad.npz")
    make(path)
    with pytest.raises(InputError, match=message):
        load_inputs(path, SPEC)


def test_image_folder_is_resized_and_preprocessed(tmp_path):
    from PIL import Image
    img = (np.arange(56 * 56) % 256).reshape(56, 56).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "b.png")
    Image.fromarray(np.stack([img] * 3, -1)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    x, y, names = load_inputs(str(tmp_path), SPEC)
    assert names == ["a.jpg", "b.png"] and x.shape == (2, 1, 28, 28) and y is None
    assert np.isfinite(x).all()


def test_missing_or_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_inputs(str(tmp_path / "nope.npz"), SPEC)
    with pytest.raises(InputError, match="holds no images"):
        load_inputs(str(tmp_path), SPEC)
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(InputError, match=".npz file or a folder"):
        load_inputs(str(tmp_path / "x.csv"), SPEC)
