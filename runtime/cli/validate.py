"""Verify a bundle: manifest, every file's sha256 and, with --check, the reference outputs
(exit code 1 when they do not match)."""
import json
import sys

from edgesdk.errors import InputError
from edgesdk.runtime.cli.options import (add_builds_argument, add_trusted_key_argument, builds_option,
                                         print_builds)
from edgesdk.table import printable


def add_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle")
    p.add_argument("--check", action="store_true",
                   help="also run the reference inputs and compare every exit's outputs")
    add_builds_argument(p, "check")
    add_trusted_key_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args):
    """Verify the manifest and every file hash; with --check, the reference outputs too."""
    from edgesdk.bundle import read_bundle
    from edgesdk.bundle import unlisted_entries
    bundle = read_bundle(args.bundle)
    if args.trusted_key:
        from edgesdk.signing import check_signature
        check_signature(bundle.manifest, args.trusted_key, bundle.root)
    out = {"bundle": bundle.root, "files": len(bundle.manifest["files"]), "hashes": "ok",
           "unlisted": unlisted_entries(bundle),
           "signed_by": (bundle.manifest.get("signature") or {}).get("public_key")}
    if args.check:
        from edgesdk.runtime.engine import EdgeModel
        from edgesdk.runtime.reference import check_reference
        request, fallback = builds_option(args)
        out["reference"] = check_reference(EdgeModel(bundle, builds=request, fallback=fallback))
        if bundle.manifest.get("cascade"):   # every level's own reference outputs too
            from edgesdk.bundle import read_bundle as read
            out["levels"] = {
                level["id"]: check_reference(EdgeModel(
                    bundle if level["bundle"] == "." else read(bundle.path(level["bundle"]),
                                                              verify=False),
                    builds=request, fallback=fallback))
                for level in bundle.manifest["cascade"]["levels"]}
    elif args.builds:
        raise InputError("--builds chooses the builds --check runs: add --check")
    if args.json:
        print(json.dumps(out))
    else:
        print("{}: manifest and {} file hashes ok".format(printable(bundle.root), out["files"]))
        if out["unlisted"]:
            print("warning: {} entr{} in the directory the manifest does not list (never read "
                  "by edgesdk, left out when the bundle is rewritten): {}".format(
                      len(out["unlisted"]), "y" if len(out["unlisted"]) == 1 else "ies",
                      ", ".join(printable(u) for u in out["unlisted"])))
        if args.check:
            ref = out["reference"]
            if ref["mode"] == "logits":
                how = "logits within atol={} rtol={}".format(ref["atol"], ref["rtol"])
            else:
                how = ("another precision than the reference: top-1 class kept on the samples "
                       "that are no near tie ({} per exit)".format(ref["decisive_samples"]))
            print("reference check ({} samples, {}): {}; max abs error per exit: {}; top-1 "
                  "agreement per exit: {}".format(
                      ref["samples"], how, "passed" if ref["passed"] else "FAILED",
                      ", ".join("{:.3g}".format(e) for e in ref["max_abs_error"]),
                      ", ".join("{:.0%}".format(a) for a in ref["top1_agreement"])))
            print_builds(ref["builds"])
            for lid, lv in sorted((out.get("levels") or {}).items()):
                print("cascade level {}: reference check {}; max abs error per exit: {}".format(
                    lid, "passed" if lv["passed"] else "FAILED",
                    ", ".join("{:.3g}".format(e) for e in lv["max_abs_error"])))
    passed = args.check and out["reference"]["passed"] and all(
        lv["passed"] for lv in (out.get("levels") or {}).values())
    if args.check and not passed:   # as compare and build --emulate: 1
        sys.stderr.write("edgesdk validate: reference outputs do not match: the bundle's graphs "
                         "or this machine's executor produce different results than at "
                         "conversion\n")
        return 1
    return 0
