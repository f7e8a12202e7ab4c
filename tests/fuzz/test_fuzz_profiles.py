"""Fuzzing profile-store import (CSV / JSON exports and SQLite databases through merge_into): a row count or an
EdgeSDKError, and the store still opens and reads afterwards."""
import csv
import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesdk.errors import EdgeSDKError, InputError
from edgesdk.profiles import COLUMNS, STORE_FORMAT, ProfileStore, merge_into, read_rows
from fuzz_strategies import JSON, ODD, check_error, fuzz_settings, mutated

ROW = {"device": "dev-a", "target": "host", "bundle_sha256": "b" * 64, "graph": "stage0",
       "build": "onnx", "precision": "fp32", "batch": 1, "resolution": "28x28",
       "conditions": "threads=2", "metric": "mean_ms", "value": 1.5, "sensor": "none", "sdk_version": "0.1.0",
       "measured_at": "2026-11-22T10:00:00.000000Z"}
EXPORT = {"format": STORE_FORMAT, "version": 1, "devices": {"dev-a": {"cpu": "x"}},
          "rows": [ROW, dict(ROW, metric="energy_mj", value=None)]}


def _csv(rows, header=COLUMNS):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode("utf-8", "surrogatepass")


CSV_OK = _csv([[ROW[c] for c in COLUMNS]])


def _import(tmp_path, ext, body):
    """merge_into a fresh store: the row count, or a checked error; the store reopens."""
    path = tmp_path / ("import" + ext)
    path.write_bytes(body)
    db = str(tmp_path / "store.sqlite")
    with ProfileStore(db) as store:
        store.db.execute("DELETE FROM measurements")
        store.db.commit()
        try:
            n = merge_into(store, str(path))
            assert n == len(store.rows()) or n >= len(store.rows())
        except EdgeSDKError as exc:
            check_error(exc)
            assert store.rows() == []  # all or nothing
            n = None
    with ProfileStore(db, create=False) as again:
        again.rows()
        again.devices()
    return n


@fuzz_settings(150)
@given(ext=st.sampled_from([".csv", ".json"]), body=st.binary(max_size=300)
       | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_files(tmp_path, ext, body):
    _import(tmp_path, ext, body)


def _dumps(doc):
    try:
        return json.dumps(doc).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{"


@fuzz_settings(200)
@given(doc=mutated(EXPORT))
def test_mutated_json_export(tmp_path, doc):
    _import(tmp_path, ".json", _dumps(doc))


CELLS = st.sampled_from(["", "0", "-1", "1e999", "nan", "inf", "10" * 30, "1.5", "x" * 200000,
                         "\x00", "\u00e9", '"', "a,b", "\n"]) | st.text(max_size=8)


@fuzz_settings(150)
@given(cells=st.lists(st.lists(CELLS, max_size=len(COLUMNS) + 2), max_size=3),
       header=st.permutations(COLUMNS) | st.lists(CELLS, max_size=4),
       raw=st.sampled_from([b"", b"\xff\xfe", b"\x00", b"\"" * 3, b"\r"]))
def test_mutated_csv_export(tmp_path, cells, header, raw):
    _import(tmp_path, ".csv", _csv(cells, header) + raw)


# Regressions: minimal inputs the fuzzing found (each escaped as another exception before).
@pytest.mark.parametrize("ext, body, message", [
    (".csv", CSV_OK[:40] + b"\xe9", "not a readable CSV export"),          # UnicodeDecodeError
    (".csv", CSV_OK + b"x" * 200000 + b"\n", "field larger than"),         # csv.Error
    (".json", b"[" * 100000 + b"]" * 100000, "nested too deeply"),         # RecursionError
    (".json", _dumps(dict(EXPORT, devices=[1])), "devices must be an object"),  # AttributeError
    (".json", b'{"format": "edgesdk-profiles", "rows": [], "devices": {"\\ud800": {}}}',
     "devices must be an object"),                                         # UnicodeEncodeError
    (".json", _dumps(dict(EXPORT, rows=[dict(ROW, batch=1)]))
     .replace(b'"batch": 1', b'"batch": 1e999'), "batch inf is not an integer"),  # OverflowError
    (".json", _dumps(dict(EXPORT, rows=[dict(ROW, batch=10 ** 30)])), "batch must be >= 1 and <="),
    (".csv", _csv([[dict(ROW, batch=10 ** 30)[c] for c in COLUMNS]]), "batch must be >= 1 and <="),
    (".json", _dumps(dict(EXPORT, rows=[dict(ROW, value=10 ** 400)])), "is not a number"),
    (".json", _dumps(dict(EXPORT, rows=[dict(ROW, graph="\ud800")])), "graph must be a non-empty"),
])
def test_import_errors_found_by_fuzzing(tmp_path, ext, body, message):
    path = tmp_path / ("bad" + ext)
    path.write_bytes(body)
    with ProfileStore(str(tmp_path / "p.sqlite")) as store:
        with pytest.raises(InputError, match=message):
            merge_into(store, str(path))
        assert store.rows() == []


def test_valid_exports_still_import(tmp_path):
    assert _import(tmp_path, ".json", _dumps(EXPORT)) == 2
    assert _import(tmp_path, ".csv", CSV_OK) == 1
    rows, devices = read_rows(str(tmp_path / "import.csv"))
    assert rows[0]["graph"] == "stage0" and devices == {}


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory):
    """A small valid profile database (rows, a device, exit scores) as bytes."""
    path = str(tmp_path_factory.mktemp("seed") / "seed.sqlite")
    with ProfileStore(path) as s:
        s.add_device("dev-a", {"cpu": "x"})
        s.write([ROW, dict(ROW, graph="exit0")])
        s.write_exit_scores("b" * 64, "d" * 64, "max-softmax", [[0.5, 0.9]], [[1, 0]])
    with open(path, "rb") as f:
        return f.read()


@fuzz_settings(120)
@given(data=st.data())
def test_mutated_sqlite_stores(tmp_path, store_bytes, data):
    # Another database, damaged anywhere (header, schema page, rows): rows merged, or an
    # edgesdk error with nothing merged; never a hang, a crash or a damaged store.
    body = bytearray(store_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(body))))
    _import(tmp_path, ".sqlite", bytes(body if cut is None else body[:cut]))
