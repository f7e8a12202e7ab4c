"""Read runtime inputs from files: an ``.npz`` (key ``x``, optional ``y``) or a folder of images.

``x`` of a floating dtype is taken as model-ready input; integer ``x`` (raw pixels) goes
through the bundle's preprocessing. Images are read with Pillow when it is installed,
converted to grey or RGB as the preprocessing's channel count says, and resized to the
model's input size. Python 3.6 compatible.
"""
import os
import zipfile

import numpy as np

from edgesdk.deps import require
from edgesdk.errors import InputError, ResourceLimitError
from edgesdk.runtime.inputs import preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff")
# What reading a damaged or foreign .npz raises (read_npz's callers turn it into their error).
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def _check_npz_sizes(path, max_bytes):
    """Refuse an .npz whose arrays would need more than ``max_bytes``, or whose array headers
    claim more data than their members hold, from the headers alone: numpy allocates what a
    header claims before it reads the data."""
    fmt = np.lib.format
    total = 0
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            with z.open(info) as f:
                version = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if version == (1, 0) else \
                    fmt.read_array_header_2_0
                shape, _, dtype = read(f)
            nbytes = dtype.itemsize
            for d in shape:
                nbytes *= d
            if nbytes > info.file_size:
                raise ValueError("array '{}' claims {} bytes but its member holds {}".format(
                    info.filename, nbytes, info.file_size))
            total += nbytes
    if max_bytes is not None and total > max_bytes:
        raise ResourceLimitError("{} holds {:,.1f} MiB of arrays, more than the {:,.1f} MiB "
                                 "allowed here".format(path, total / 1048576.0,
                                                       max_bytes / 1048576.0))


def read_npz(path, max_bytes=None):
    """Every array of an .npz as a dict, never unpickling, after checking the headers (see
    :func:`_check_npz_sizes`). Read errors raise one of :data:`NPZ_ERRORS`."""
    _check_npz_sizes(path, max_bytes)
    with np.load(path, allow_pickle=False) as data:
        return dict((name, data[name]) for name in data.files)


def load_npz(path, max_bytes=None):
    """``(x, y or None)`` from an .npz file (never unpickles)."""
    try:
        data = read_npz(path, max_bytes)
    except NPZ_ERRORS as exc:
        raise InputError("cannot read {} as .npz: {}".format(path, exc))
    if "x" not in data:
        raise InputError("{} has arrays {}; it needs 'x' (inputs) and optionally 'y' "
                         "(integer labels)".format(path, sorted(data)))
    return data["x"], data.get("y")


MAX_IMAGE_PIXELS = 64 * 1024 * 1024   # 8192 x 8192: far above any board camera's frames


def load_image_folder(path, spec):
    """``(raw uint8 images (N, H, W[, C]), file names)`` from a folder, sorted by name."""
    image = require("PIL.Image", "images", "read image folders")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise InputError("{} holds no images ({})".format(path, ", ".join(IMAGE_EXTENSIONS)))
    pre = spec.get("preprocessing") or {}
    channels = len(pre.get("mean", [1]))
    height, width = spec["shape"][2], spec["shape"][3]
    arrays = []
    for name in names:
        try:
            with image.open(os.path.join(path, name)) as img:
                # The header's size, before any pixel is decoded: a small file can claim
                # billions of pixels (a decompression bomb).
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                    raise InputError("image {} is {}x{} pixels, more than the {} an input image "
                                     "may have".format(name, img.size[0], img.size[1],
                                                       MAX_IMAGE_PIXELS))
                img = img.convert("L" if channels == 1 else "RGB").resize((width, height))
                arrays.append(np.asarray(img, dtype=np.uint8))
        except (OSError, getattr(image, "DecompressionBombError", OSError)) as exc:
            raise InputError("cannot read image {}: {}".format(name, exc))
    return np.stack(arrays), names


def load_inputs(path, spec, max_bytes=None):
    """``(model-ready float32 x, labels or None, sample names)`` for an .npz or image folder;
    an .npz whose arrays hold more than ``max_bytes`` is refused before it is read."""
    if os.path.isdir(path):
        raw, names = load_image_folder(path, spec)
        return preprocess(raw, spec), None, names
    if not os.path.exists(path):
        raise InputError("input '{}' does not exist".format(path))
    if not os.path.isfile(path):
        raise InputError("input '{}' is neither a regular file nor a folder".format(path))
    if not path.endswith(".npz"):
        raise InputError("input '{}' must be an .npz file or a folder of images".format(path))
    x, y = load_npz(path, max_bytes)
    if x.ndim == 0:
        raise InputError("{}: 'x' is a single number; it must be a batch of samples (its first "
                         "dimension the batch)".format(path))
    if x.dtype.kind in "ui":
        x = preprocess(x, spec)
    if y is not None and (y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x)):
        raise InputError("{}: 'y' must be integer labels, one per sample ({}), got shape {} "
                         "dtype {}".format(path, len(x), list(y.shape), y.dtype))
    return x, y, [str(i) for i in range(len(x))]
