"""Manage a profile database: `show` its rows, `export` them to CSV/JSON, `import` (merge) rows
from CSV, JSON or another database (the newer of two measurements of the same thing wins)."""
import json

from edgesdk.table import format_table


def add_arguments(p):
    p.add_argument("action", choices=["show", "export", "import"])
    p.add_argument("db", help="profile database (SQLite)")
    p.add_argument("file", nargs="?", help="CSV/JSON (export, import) or another database (import)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args):
    """Call :mod:`edgesdk.profiles` for the action."""
    from edgesdk.errors import InputError
    from edgesdk.profiles import ProfileStore, export_rows, merge_into
    if args.action != "show" and not args.file:
        raise InputError("'{}' needs a FILE".format(args.action))
    with ProfileStore(args.db, create=args.action == "import") as store:
        if args.action == "export":
            n = export_rows(store, args.file)
            result = {"exported": n, "file": args.file}
        elif args.action == "import":
            n = merge_into(store, args.file)
            result = {"imported": n, "file": args.file}
        else:
            rows = store.rows()
            if args.json:
                print(json.dumps({"devices": store.devices(), "rows": rows}))
                return 0
            print(format_table(["device", "bundle", "graph", "batch", "conditions", "metric",
                                "value", "sensor"],
                               [[r["device"], r["bundle_sha256"][:12], r["graph"], r["batch"],
                                 r["conditions"] or "-", r["metric"],
                                 "-" if r["value"] is None else "{:.4g}".format(r["value"]),
                                 r["sensor"]] for r in rows]))
            return 0
    print(json.dumps(result) if args.json else "{} rows {} {}".format(
        n, "written to" if args.action == "export" else "merged from", args.file))
    return 0
