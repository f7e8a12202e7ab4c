"""Frames from a camera or a video file with OpenCV, closed cleanly whatever happens.

``with open_video(0) as video: for frame in video: ...`` -- a camera index or a file path.
A source that cannot be opened is an InputError naming it; a stream that ends before the
frame count its container announced (a truncated file, an unplugged camera) stops the loop
and is recorded in ``video.ended_early``. Python 3.6 / numpy 1.19 compatible.
"""
import os

from edgesdk.deps import require
from edgesdk.errors import InputError


class VideoSource(object):
    """An open capture: iterate for BGR frames (``numpy`` arrays ``(H, W, 3)``)."""

    def __init__(self, source):
        cv2 = require("cv2", "images", "read video")
        self.source = source
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        if isinstance(source, str) and not os.path.isfile(source):
            raise InputError("video file '{}' does not exist".format(source))
        self.capture = cv2.VideoCapture(source)
        if not self.capture.isOpened():
            self.capture.release()
            raise InputError("cannot open video source {!r}: {}".format(
                self.source, "no such camera, or it is in use" if isinstance(source, int)
                else "OpenCV cannot decode it (not a video, or a codec it lacks)"))
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.announced = int(count) if count and count > 0 else None  # cameras: unknown
        self.fps = self.capture.get(cv2.CAP_PROP_FPS) or None
        self.frames = 0
        self.ended_early = False

    def __iter__(self):
        while True:
            try:
                ok, frame = self.capture.read()
            except Exception:  # a broken stream can raise inside the decoder
                ok, frame = False, None
            if not ok or frame is None:
                self.ended_early = self.announced is not None and self.frames < self.announced
                return
            self.frames += 1
            yield frame

    def close(self):
        self.capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_video(source):
    """Open a camera index (``0`` or ``"0"``) or a video file; use it as a context manager."""
    return VideoSource(source)
