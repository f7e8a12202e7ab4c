"""MetaSchedule tuning databases for TVM builds: open (checking the target they were tuned
for), hash, and tune.

A database is a folder with MetaSchedule's two JSON-lines files. Its records are keyed by the
structural hash of each fused TIR function, so one database serves every stage and model
with the same workloads (the same conv shapes); records made for another target are refused,
because applying them would silently change nothing or build code for the wrong processor.
"""
import hashlib
import json
import os

from edgesdk.errors import BuildError, InputError

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
# Target fields that decide the generated code; a database tuned with different values is
# for another processor. (num-cores only sizes the thread pool.)
CODEGEN_FIELDS = ("kind", "mtriple", "mcpu", "mattr", "tag", "arch", "device", "model")


def database_sha256(folder):
    """sha256 over the database's two files (what a build records)."""
    h = hashlib.sha256()
    for name in DATABASE_FILES:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def record_targets(folder):
    """The distinct targets (as dicts) the database's tuning records were measured for."""
    seen = {}
    with open(os.path.join(folder, DATABASE_FILES[1])) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                target = json.loads(line)[1][2]
            except (ValueError, IndexError, TypeError):
                raise BuildError("{}: line {} is not a MetaSchedule tuning record".format(
                    DATABASE_FILES[1], n))
            seen.setdefault(json.dumps(target, sort_keys=True), target)
    return list(seen.values())


def _codegen_view(target):
    """The fields of a target dict (TVM's export or edgesdk's) that decide generated code."""
    target = dict(target)
    host = target.pop("host", None)
    view = {k: target[k] for k in CODEGEN_FIELDS if target.get(k) not in (None, "", [], ())}
    if isinstance(view.get("mattr"), (list, tuple)):
        view["mattr"] = sorted(view["mattr"])
    if host:
        view["host"] = _codegen_view(host)
    return view


def check_database_target(folder, target):
    """Refuse a database whose records were tuned for another target than ``target`` (a dict)."""
    want = _codegen_view(target)
    for got in record_targets(folder):
        if _codegen_view(got) != want:
            raise BuildError(
                "tuning database '{}' was tuned for {}, not for this build's target {}: tune "
                "again for this target (edgesdk tune) or build without --tuning-db".format(
                    folder, json.dumps(_codegen_view(got), sort_keys=True),
                    json.dumps(want, sort_keys=True)))


def open_database(folder, target):
    """``(MetaSchedule JSONDatabase, sha256)`` for a database folder tuned for ``target``."""
    missing = [f for f in DATABASE_FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise InputError("'{}' is not a tuning database (missing {})".format(
            folder, ", ".join(missing)))
    check_database_target(folder, target)
    from tvm.s_tir.meta_schedule.database import JSONDatabase
    return JSONDatabase(work_dir=folder, allow_missing=False), database_sha256(folder)
