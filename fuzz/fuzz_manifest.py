"""atheris: manifest.json bytes -> stdlib json -> edgesdk.manifest.validate.

Every input must end in a manifest (dict) or an EdgeSDKError; anything else is a bug.
Run: python fuzz/fuzz_manifest.py CORPUS_DIR -max_total_time=300 -print_final_stats=1
"""
import json
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports():
    from edgesdk import manifest as mf
    from edgesdk.bundle import _reject_constant
    from edgesdk.errors import EdgeSDKError
    import common


def test_one_input(data):
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return  # what read_bundle reports as "not UTF-8" / "not valid JSON"
    try:
        out = mf.validate(obj)
    except EdgeSDKError as exc:
        assert str(exc), "empty error message"
        return
    assert isinstance(out, dict)
    mf.content_digest(out)  # a valid manifest can always be hashed (read_bundle does it next)


if __name__ == "__main__":
    tmp = common.tempdir()
    seed = json.dumps(common.make_bundle(tmp), indent=1).encode()
    common.run(test_one_input, [seed])
