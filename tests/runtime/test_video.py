"""The camera/video sample on a video written with OpenCV from real MNIST digits, and video
sources that cannot be opened or end mid-stream."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("cv2")

from edgesdk.errors import InputError  # noqa: E402
from edgesdk.runtime.video import open_video  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = os.path.join(ROOT, "samples", "video_adaptive")


@pytest.fixture(scope="module")
def digits_video(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_video", os.path.join(SAMPLE, "make_video.py"))
    make_video = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_video)
    path = str(tmp_path_factory.mktemp("video") / "digits.avi")
    labels = make_video.write_digit_video(path, digits=20, hold=3)
    return path, labels


def _sample(*args):
    return subprocess.run([sys.executable, os.path.join(SAMPLE, "run.py")] + list(args),
                          capture_output=True, text=True, timeout=300)


def test_sample_runs_every_frame_adaptively_and_plots(digits_video, bundle, tmp_path):
    path, labels = digits_video
    proc = _sample("--source", path, "--bundle", bundle, "--out", str(tmp_path), "--every", "20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "frames: 60" in proc.stdout
    exits = json.loads(proc.stdout.split("exits: ")[1].splitlines()[0])
    assert sum(exits) == 60
    assert proc.stderr.count("FPS over the last 20 frames") == 3
    png = tmp_path / "video_latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The frames are real digits: the tiny model reads most of them right.
    predicted = json.loads(proc.stdout.split("predicted labels (first 20): ")[1].splitlines()[0])
    assert np.mean(np.asarray(predicted) == np.asarray(labels[:20])) >= 0.6


def test_a_stream_that_ends_early_is_closed_and_reported(digits_video, bundle, tmp_path):
    path, _ = digits_video
    cut = str(tmp_path / "cut.avi")
    data = open(path, "rb").read()
    open(cut, "wb").write(data[:len(data) * 2 // 3])
    with open_video(cut) as video:
        frames = sum(1 for _ in video)
    assert video.ended_early and 0 < frames < video.announced == 60
    assert not video.capture.isOpened()
    proc = _sample("--source", cut, "--bundle", bundle, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the stream ended after {} of 60 announced frames".format(frames) in proc.stderr


def test_sources_that_cannot_be_opened_are_clear_errors(tmp_path, bundle):
    with pytest.raises(InputError, match="does not exist"):
        open_video(str(tmp_path / "missing.avi"))
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(InputError, match="OpenCV cannot decode it"):
        open_video(str(junk))
    with pytest.raises(InputError, match="no such camera"):
        open_video("97")
    proc = _sample("--source", str(junk), "--bundle", bundle, "--out", str(tmp_path))
    assert proc.returncode == 4 and "cannot open video source" in proc.stderr


def test_the_capture_is_released_when_the_loop_raises(digits_video):
    path, _ = digits_video
    with pytest.raises(RuntimeError):
        with open_video(path) as video:
            for _ in video:
                raise RuntimeError("model failed")
    assert not video.capture.isOpened() and video.frames == 1
