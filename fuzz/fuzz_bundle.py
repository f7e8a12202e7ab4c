"""atheris: the bundle loader. First byte even: the rest is manifest.json of a bundle whose
files exist (read_bundle); odd: the rest is a tar archive (unpack_bundle).

Every input must end in a Bundle or an EdgeSDKError; anything else is a bug.
Run: python fuzz/fuzz_bundle.py CORPUS_DIR -max_total_time=300 -print_final_stats=1
"""
import os
import shutil
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports():
    from edgesdk.bundle import read_bundle
    from edgesdk.bundle_archive import unpack_bundle
    from edgesdk.errors import EdgeSDKError
    import common

WORK = common.tempdir()
ROOT = os.path.join(WORK, "b.edgebundle")
common.make_bundle(ROOT)


def test_one_input(data):
    if not data:
        return
    mode, body = data[0], data[1:]
    try:
        if mode % 2 == 0:
            with open(os.path.join(ROOT, "manifest.json"), "wb") as f:
                f.write(body)
            out = read_bundle(ROOT)
        else:
            dest = os.path.join(WORK, "unpacked.edgebundle")
            try:
                out = unpack_bundle(body, dest)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
    except EdgeSDKError as exc:
        assert str(exc), "empty error message"
        return
    assert isinstance(out.manifest, dict)


if __name__ == "__main__":
    with open(os.path.join(ROOT, "manifest.json"), "rb") as f:
        manifest = f.read()
    common.run(test_one_input, [b"\x00" + manifest, b"\x01" + common.tar_of(ROOT)])
