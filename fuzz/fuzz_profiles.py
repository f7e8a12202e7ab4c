"""atheris: profile-store import. First byte 'S': the rest is another SQLite database (read
as untrusted); 'J' (or any other even byte): a .json export; otherwise a .csv export; merged
into a fresh store with edgesdk.profiles.merge_into.

Every input must end in a row count or an EdgeSDKError, and the store must still open and
read afterwards; anything else is a bug.
Run: python fuzz/fuzz_profiles.py CORPUS_DIR -max_total_time=300 -print_final_stats=1
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
with atheris.instrument_imports():
    from edgesdk import profile_import
    from edgesdk.errors import EdgeSDKError
    from edgesdk.profiles import ProfileStore, merge_into
    import common

# Below the harness's -timeout=20, so a query the import stops counts as refused, not hung.
profile_import.MAX_SECONDS = 5.0

WORK = common.tempdir()
DB = os.path.join(WORK, "store.sqlite")


def test_one_input(data):
    if not data:
        return
    path = os.path.join(WORK, "import.sqlite" if data[0] == ord("S") else
                        "import.json" if data[0] % 2 == 0 else "import.csv")
    with open(path, "wb") as f:
        f.write(data[1:])
    with ProfileStore(DB) as store:
        with store.db:  # an empty store per input keeps runs comparable
            store.db.execute("DELETE FROM measurements")
            store.db.execute("DELETE FROM devices")
        try:
            n = merge_into(store, path)
            assert isinstance(n, int) and n >= 0
        except EdgeSDKError as exc:
            assert str(exc), "empty error message"
    with ProfileStore(DB, create=False) as store:  # still opens and reads
        store.rows()
        store.devices()


if __name__ == "__main__":
    common.run(test_one_input, common.profile_seeds())
