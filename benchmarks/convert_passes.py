"""What one `convert --precisions fp32,int8 --profile` costs in bundle traffic, on the sample.

Converts the trained sample model with FP32 and INT8 builds, profiles that bundle on this
machine, then converts again choosing builds and exits from the profile, and counts during
that second conversion: manifest reads (every bundle opened), manifest writes, files hashed
(and their bytes), EdgeModel constructions, and ONNX Runtime sessions created. Prints one
table and, last, one JSON object.
"""
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np

from common import cpu, print_cpu, sample_parser


class Counter(object):
    """Counts calls of functions and methods by replacing them with counting wrappers."""

    def __init__(self):
        self.counts = collections.Counter()
        self._undo = []

    def wrap(self, owner, attr, key, amount=lambda *a, **k: 1):
        original = getattr(owner, attr)

        def counted(*args, **kwargs):
            self.counts[key] += amount(*args, **kwargs)
            return original(*args, **kwargs)
        setattr(owner, attr, counted)
        self._undo.append((owner, attr, original))

    def restore(self):
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)


def count_conversion(convert_once):
    """Run ``convert_once()`` with the bundle traffic counted; ``(counts, seconds)``."""
    import onnxruntime
    from edgesdk import bundle as bundle_io
    from edgesdk.runtime.engine import EdgeModel
    c = Counter()
    c.wrap(bundle_io, "_read_manifest", "manifest reads")
    c.wrap(bundle_io, "write_json_atomic", "manifest writes",
           lambda path, obj: int(os.path.basename(path) == bundle_io.MANIFEST))
    c.wrap(bundle_io, "sha256_file", "files hashed")
    c.wrap(bundle_io, "sha256_file", "MB hashed", lambda path, *a: os.path.getsize(path) / 1e6)
    c.wrap(EdgeModel, "__init__", "EdgeModel constructions")
    c.wrap(onnxruntime, "InferenceSession", "ONNX Runtime sessions")
    start = time.perf_counter()
    try:
        convert_once()
    finally:
        c.restore()
    return c.counts, time.perf_counter() - start


def main():
    parser = sample_parser(__doc__)
    args = parser.parse_args()
    print_cpu()
    from data import PREPROCESSING, load_splits, to_model_input
    from run import prepare
    from edgesdk.converters import convert
    from edgesdk.profiles import ProfileStore
    from edgesdk.runtime.profiler import profile_bundle
    model = prepare(args.workdir, epochs=args.epochs, threads=args.threads)[1]
    splits = load_splits()
    x, y = to_model_input(splits["calibration"][0]), splits["calibration"][1]
    kw = dict(preprocessing=PREPROCESSING, progress=False, precisions=("fp32", "int8"),
              calibration_data=(x, y), threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        first = os.path.join(tmp, "int8.edgebundle")
        convert(model, x[:16], first, **kw)
        db = os.path.join(tmp, "profile.sqlite")
        profile_bundle(first, [1], warmup=5, repeats=20, db=db, progress=False,
                       threads=args.threads, warmup_s=0.1, min_seconds=0.1)
        with ProfileStore(db) as store:
            device = next(iter(store.devices()))
        counts, seconds = count_conversion(lambda: convert(
            model, x[:16], os.path.join(tmp, "chosen.edgebundle"), profile=db, device=device, **kw))
    keys = ["manifest reads", "manifest writes", "files hashed", "MB hashed",
            "EdgeModel constructions", "ONNX Runtime sessions"]
    for k in keys:
        print("{:<26} {:>8.4g}".format(k, counts[k]))
    print("{:<26} {:>8.2f}".format("seconds", seconds))
    out = {k.replace(" ", "_"): round(counts[k], 3) for k in keys}
    out.update(seconds=round(seconds, 2), threads=args.threads, **cpu())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
