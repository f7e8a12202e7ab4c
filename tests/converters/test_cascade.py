"""Resolution cascades: one model's weights at 14x14 and 28x28 in one bundle, thresholds chosen
on labelled raw images, escalation of the unconfident, the OpenCV input pipeline, tampering
and bad input."""
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("cv2")

from conftest import PREPROCESSING  # noqa: E402

from edgesdk.converters.cascade import choose_thresholds, convert_cascade  # noqa: E402
from edgesdk.errors import CalibrationError, InputError, IntegrityError  # noqa: E402
from edgesdk.runtime.cascade import load_cascade, resize_images  # noqa: E402
from edgesdk.runtime.engine import load_bundle  # noqa: E402
from edgesdk.runtime.inputs import preprocess  # noqa: E402
from edgesdk.runtime.policies import get_policy  # noqa: E402


@pytest.fixture(scope="module")
def raw_digits():
    from models import mnist_raw
    return mnist_raw(1600)


@pytest.fixture(scope="module")
def shared_weights(raw_digits):
    """A ConvClassifier trained at both resolutions at once (the weights are shared)."""
    import torch
    from models import ConvClassifier
    raw, y = raw_digits
    torch.manual_seed(0)
    net = ConvClassifier()
    spec = {"name": "x", "preprocessing": PREPROCESSING}
    xs = [torch.from_numpy(preprocess(resize_images(raw[:1000], (s, s)), spec)) for s in (14, 28)]
    yt = torch.from_numpy(y[:1000])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, 1000, 32):
            loss = sum(torch.nn.functional.cross_entropy(net(x[i:i + 32]), yt[i:i + 32]) for x in xs)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def cascade_path(tmp_path_factory, shared_weights, raw_digits):
    raw, y = raw_digits
    out = str(tmp_path_factory.mktemp("cascade") / "digits.edgebundle")
    # 300 images certify no less than 1.52 points at the default 99%: allow 2.
    convert_cascade(shared_weights, [14, 28], raw[:8], out, calibration_images=raw[1000:1300],
                    labels=y[1000:1300], max_accuracy_drop=2.0, preprocessing=PREPROCESSING,
                    progress=False)
    return out


def test_cascade_bundle_holds_both_resolutions_and_escalates_the_unconfident(cascade_path,
                                                                             raw_digits):
    raw, y = raw_digits
    cascade = load_cascade(cascade_path)
    assert cascade.resolutions == [(14, 14), (28, 28)]
    assert cascade.levels[0].input_spec["shape"][2:] == [14, 14]
    record = load_bundle(cascade_path).bundle.manifest["cascade"]["chosen_from"]
    r = record["risk"]    # the promise: certified within 2 points with 99% confidence
    assert r["accuracy_drop_bound_points"] <= 2.0 and r["confidence"] == 0.99
    assert r["samples"] == 300 and "clopper-pearson" in r["method"]
    assert record["accuracy_cascade"] >= record["accuracy_full"] - r["losses"] / 300.0
    test = raw[1300:1600]
    got = cascade.run(test)
    counts = got.exit_counts()
    assert counts.sum() == 300 and counts[0] > 0
    # Each sample's answer is its level's: level 0 on the 14x14 resize, else the full model.
    small = cascade.levels[0].run(cascade.prepare(test, 0)).probabilities
    full = cascade.levels[1].run(cascade.prepare(test, 1)).probabilities
    at0 = got.exit_index == 0
    np.testing.assert_allclose(got.probabilities[at0], small[at0], atol=1e-6)
    np.testing.assert_allclose(got.probabilities[~at0], full[~at0], atol=1e-6)
    assert (small[at0].max(axis=1) >= cascade.thresholds[0]).all()
    assert (small[~at0].max(axis=1) < cascade.thresholds[0]).all()
    # The level-1 time is only spent on the escalated samples.
    assert np.isnan(got.stage_ms[at0, 1]).all() and not np.isnan(got.stage_ms[~at0, 1]).any()
    # A threshold above every score escalates everything: the full-resolution model's answers.
    everyone = cascade.run(test, thresholds=[1.0])
    assert everyone.exit_counts().tolist() == [0, 300]
    np.testing.assert_array_equal(everyone.labels, full.argmax(axis=1))
    # The outer bundle alone is the plain full-resolution model.
    plain = load_bundle(cascade_path).run(preprocess(test, cascade.levels[1].input_spec))
    np.testing.assert_array_equal(plain.labels, full.argmax(axis=1))


def test_separate_models_per_resolution_and_no_labels(tmp_path, shared_weights, raw_digits):
    from models import ConvClassifier
    raw, _ = raw_digits
    out = str(tmp_path / "two.edgebundle")
    # Example images in convert's (N, C, H, W) layout are taken as well.
    spec = convert_cascade([ConvClassifier(width=8).eval(), shared_weights], [(10, 12), 28],
                           raw[:4, None], out, preprocessing=PREPROCESSING, resize="linear",
                           crop=0.9, progress=False)
    assert [lv["threshold"] for lv in spec["levels"]] == [None, None]
    assert spec["pipeline"] == {"resize": "linear", "crop": 0.9}
    cascade = load_cascade(out)
    assert cascade.levels[0].input_spec["shape"][2:] == [10, 12]
    # Without thresholds no sample leaves early: the last level answers for all.
    assert cascade.run(raw[:5]).exit_counts().tolist() == [0, 5]


def test_the_pipeline_crops_then_resizes_with_opencv():
    import cv2
    img = np.arange(40 * 60, dtype=np.uint8).reshape(1, 40, 60)
    got = resize_images(img, (10, 20), "area", crop=0.5)
    want = cv2.resize(img[0, 10:30, 15:45], (20, 10), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got[0], want)
    rgb = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    assert resize_images(rgb, (8, 8)).shape == (2, 8, 8, 3)
    with pytest.raises(InputError, match=r"\(N, H, W\) or \(N, H, W, C\)"):
        resize_images(np.zeros((32, 32)), (8, 8))


def test_thresholds_keep_the_accuracy_promise_on_a_known_case():
    pol = get_policy("max-softmax")
    labels = np.array([0, 0, 1, 1])
    # Level 0 is right and confident on samples 0 and 2, wrong (but fairly sure) on 3.
    level0 = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    full = np.array([[0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.1, 0.9]])  # right on all
    # Point estimates (confidence 0): the most aggressive threshold within the target.
    thresholds, record = choose_thresholds([level0, full], labels, 0.0, pol, confidence=0)
    assert thresholds == [0.8, None]         # sample 3 (0.7) must not leave at level 0
    assert record["leaving_per_level"] == [2, 2] and record["accuracy_cascade"] == 1.0
    loose, rec = choose_thresholds([level0, full], labels, 30.0, pol, confidence=0)
    assert loose[0] == 0.6 and rec["accuracy_cascade"] == 0.75   # 25% may be lost
    assert rec["risk"]["accuracy_drop_bound_points"] is None
    # With a guarantee, 4 samples certify nothing below 68 points (99%).
    with pytest.raises(CalibrationError, match="4 labelled samples at confidence 0.99"):
        choose_thresholds([level0, full], labels, 30.0, pol)


def test_thresholds_stop_at_the_first_uncertified_level():
    """100 samples: level 0 is right on its 60 most confident (0.99 .. 0.9), then wrong on
    one at 0.85 while the full model is right; 3 losses would be needed to certify less."""
    pol = get_policy("max-softmax")
    n = 100
    labels = np.zeros(n, dtype=np.int64)
    top = np.concatenate([np.linspace(0.99, 0.9, 60), [0.85], np.linspace(0.8, 0.6, 39)])
    level0 = np.stack([top, 1 - top], axis=1)
    level0[60] = [0.15, 0.85]            # confidently wrong
    level0[61:, :] = level0[61:, ::-1]   # the rest wrong too, less sure
    full = np.tile([0.9, 0.1], (n, 1))
    thresholds, record = choose_thresholds([level0, full], labels, 4.0, pol, confidence=0.9)
    # 0 losses at 60 leaving certify 2.3 points; the 61st setting loses 1 (bound 3.8 <= 4),
    # the 62nd 2 (bound 5.2 > 4): testing stops there and 0.85 is the lowest certified.
    assert thresholds == [0.85, None] and record["leaving_per_level"] == [61, 39]
    r = record["risk"]
    assert r["losses"] == 1 and r["samples"] == n and r["confidence"] == 0.9
    assert r["accuracy_drop_bound_points"] == pytest.approx(100 * 0.0383395, rel=1e-5)
    assert r["settings_tested"] == r["settings_certified"] + 1


def test_a_changed_byte_in_an_inner_bundle_is_refused(cascade_path, tmp_path):
    copy = str(tmp_path / "copy.edgebundle")
    shutil.copytree(cascade_path, copy)
    inner = os.path.join(copy, "variants", "r14x14.edgebundle", "stages", "stage0.onnx")
    data = bytearray(open(inner, "rb").read())
    data[len(data) // 2] ^= 1
    open(inner, "wb").write(bytes(data))
    with pytest.raises(IntegrityError, match="variants/r14x14.edgebundle/stages/stage0.onnx"):
        load_cascade(copy)


def test_bad_cascade_requests_are_refused(tmp_path, shared_weights, raw_digits, bundle):
    raw, y = raw_digits
    out = str(tmp_path / "bad.edgebundle")
    for kwargs, match in (
            ({"resolutions": [28, 14]}, "cheapest first"),
            ({"resolutions": [28]}, "at least 2 different resolutions"),
            ({"models": [shared_weights] * 3}, "3 models for 2 resolutions"),
            ({"preprocessing": None}, "give preprocessing"),
            ({"resize": "bilinear"}, "resize 'bilinear' is not one of"),
            ({"crop": 1.5}, r"crop is the central fraction kept, in \(0, 1\]"),
            ({"labels": y[:10]}, "both calibration_images and labels")):
        args = dict({"models": shared_weights, "resolutions": [14, 28], "images": raw[:4],
                     "output": out, "preprocessing": PREPROCESSING, "progress": False}, **kwargs)
        with pytest.raises(InputError, match=match):
            convert_cascade(**args)
        assert not os.path.exists(out)   # nothing half-written
    with pytest.raises(InputError, match="not a resolution cascade"):
        load_cascade(bundle)


def test_wrong_thresholds_for_a_cascade_are_refused(cascade_path, raw_digits):
    cascade = load_cascade(cascade_path)
    with pytest.raises(InputError, match="expected 1 thresholds"):
        cascade.run(raw_digits[0][:2], thresholds=[0.5, 0.5])
    with pytest.raises(InputError, match="outside"):
        cascade.run(raw_digits[0][:2], thresholds=[1.5])


def test_cli_builds_a_cascade_from_a_model_file_and_raw_images(tmp_path, shared_weights,
                                                                raw_digits, capsys):
    import torch
    from edgesdk.cli import main
    raw, y = raw_digits
    weights = str(tmp_path / "w.pt")
    torch.save(shared_weights.state_dict(), weights)
    np.savez(str(tmp_path / "ex.npz"), x=raw[:4])
    np.savez(str(tmp_path / "cal.npz"), x=raw[1000:1200], y=y[1000:1200])
    models = os.path.join(os.path.dirname(os.path.dirname(__file__)), "models.py")
    out = str(tmp_path / "cli.edgebundle")
    args = ["cascade", "--model", models + ":ConvClassifier", "--weights", weights,
            "--resolutions", "14,28", "--example-data", str(tmp_path / "ex.npz"),
            "--calibration-data", str(tmp_path / "cal.npz"), "--max-accuracy-drop", "3",
            "--scale", "1/255", "--confidence", "0.9", "--mean", "0.1307",
            "--std", "0.3081", "-o", out]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "r14x14" in text and "variants/r14x14.edgebundle" in text and "calibration:" in text
    assert load_cascade(out).thresholds[0] is not None
    bad = list(args)
    bad[bad.index("14,28")] = "14,big"
    assert main(bad + ["--force"]) == 4
    assert "--resolutions takes N or HxW" in capsys.readouterr().err
    unweighted = [a for a in args if a not in ("--weights", weights)]
    assert main(unweighted + ["--force"]) == 4
    assert "--random-weights" in capsys.readouterr().err


def test_run_inspect_validate_and_profile_understand_a_cascade(cascade_path, raw_digits,
                                                               tmp_path, capsys):
    """The device verbs take a cascade bundle: raw images through every level, as
    load_cascade runs them, and each level's own graphs checked and profiled."""
    import json
    from conftest import cli
    raw, y = raw_digits
    data = str(tmp_path / "raw.npz")
    np.savez(data, x=raw[1300:1340][:, None], y=y[1300:1340])   # convert's (N, C, H, W) layout
    code, out, err = cli(capsys, "run", cascade_path, data, "--batch-size", "8", "--json")
    assert code == 0, err
    got = json.loads(out)
    want = load_cascade(cascade_path).run(raw[1300:1340])
    assert [s["level"] for s in got["samples"]] == [["r14x14", "r28x28"][k]
                                                    for k in want.exit_index]
    assert got["summary"]["level_counts"] == np.bincount(want.exit_index, minlength=2).tolist()
    assert [s["label"] for s in got["samples"]] == want.labels.tolist()
    code, out, _ = cli(capsys, "inspect", cascade_path)
    assert code == 0 and "resolution cascade" in out and "r14x14" in out and "14x14" in out
    code, out, err = cli(capsys, "validate", cascade_path, "--check")
    assert code == 0, err
    assert "cascade level r14x14: reference check passed" in out
    code, out, err = cli(capsys, "profile", cascade_path, "--repeats", "3", "--min-seconds", "0",
                         "--warmup", "1", "--warmup-seconds", "0", "--json")
    assert code == 0, err
    levels = json.loads(out)["levels"]
    assert [lv["level"] for lv in levels] == ["r14x14", "r28x28"]
    assert all(any(r["graph"] == "exit0" for r in lv["graphs"]) for lv in levels)
    # Float model input is not raw pixels: refused with the reason.
    np.savez(data, x=raw[:4, None].astype(np.float32) / 255.0)
    code, _, err = cli(capsys, "run", cascade_path, data)
    assert code == 4 and "raw pixels" in err
