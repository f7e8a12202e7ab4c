"""Summarise a bundle: target, input, stages and exits with MACs, sizes, hashes, thresholds."""
import json

from edgesdk.bundle import read_bundle
from edgesdk.table import format_table


def add_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


def _size(n):
    return "{:.1f} KiB".format(n / 1024.0) if n < 1 << 20 else "{:.2f} MiB".format(n / float(1 << 20))


def run(args):
    """Print the bundle summary (hashes are verified first)."""
    bundle = read_bundle(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))
        return 0
    files = m["files"]
    inp = m["inputs"][0]
    print("bundle   {}  ({})".format(m["name"], bundle.root))
    print("target   {}   schema {}   edgesdk {}   created {}".format(
        m["target"], m["schema_version"], m["sdk_version"], m.get("created", "?")))
    print("input    {} {} {}   preprocessing {}".format(
        inp["name"], inp["dtype"], ["N" if d is None else d for d in inp["shape"]],
        json.dumps(inp.get("preprocessing"))))
    print("built    " + ", ".join("{} {}".format(k, v) for k, v in sorted(m["built_with"].items())))
    print()
    structured = [r for r in m.get("pruning") or [] if r.get("kind") == "structured"]
    ratios = structured[-1]["stage_ratios"] if structured else None
    rows = []
    for k, (st, ex) in enumerate(zip(m["stages"], m["exits"])):
        for entry, kind in ((st, "stage"), (ex, "exit")):
            f = files[entry["file"]]
            thr = policy = ""
            chosen = "build: profile" if entry.get("build_chosen_from") else ""
            if kind == "exit":
                policy = entry["policy"]
                thr = "always" if entry is m["exits"][-1] else (
                    "dropped" if entry.get("dropped") else
                    "off" if entry["threshold"] is None else "{:.6g}".format(entry["threshold"]))
                chosen = ", ".join(c for c in (entry["chosen_from"].get("method", ""), chosen) if c)
            others = [b.get("device") or b.get("precision", "fp32")
                      for b in entry.get("builds") or [] if b["file"] != entry["file"]]
            build = "{} {}".format(entry["format"], entry.get("precision", "fp32"))
            pruned = "{:.0%}".format(ratios[k]) if ratios and kind == "stage" else ""
            rows.append([entry["id"], build + (" (+{})".format(",".join(others)) if others else ""),
                         pruned, "{:.2f}M".format(entry["macs"] / 1e6), _size(f["bytes"]),
                         f["sha256"][:12], policy, thr, chosen])
    print(format_table(["graph", "build (other builds)", "pruned", "MACs", "size", "sha256",
                        "policy", "threshold", "chosen by"], rows))
    q = m.get("quantization") or {}
    if q.get("exit_table"):
        from edgesdk.cli.convert import exit_table_text
        print("\nselected builds vs fp32 on {} calibration samples:".format(
            q.get("exit_table_samples", "?")))
        print(exit_table_text(q["exit_table"]))
    for r in m.get("pruning") or []:
        if r.get("kind") == "structured":
            print("\npruned channels ({} {}, {} importance): MACs {:.1f}M -> {:.1f}M{}".format(
                r["tool"], r["tool_version"], r["importance"], r["macs_before"] / 1e6,
                r["macs_after"] / 1e6, "; fine-tuned {} epochs".format(r["fine_tune"]["epochs"])
                if r.get("fine_tune") else ""))
            for name, accs in (r.get("exit_accuracy") or {}).items():
                print("  {:<15} {}".format(name, "  ".join("exit {} {:.2%}".format(k, a)
                                                          for k, a in enumerate(accs))))
        elif r.get("kind") == "unstructured":
            print("\nunstructured sparsity {:.1%}, 2:4 pattern: {}; {}".format(
                r["sparsity"], "yes" if r["2:4"] else "no", r["note"]))
    total = sum(f["bytes"] for f in files.values())
    print("\n{} files, {} in all; manifest sha256 {}".format(len(files), _size(total),
                                                            m["manifest_sha256"]))
    return 0
