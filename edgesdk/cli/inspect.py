"""Summarise a bundle: target, input, stages and exits with MACs, sizes, hashes, thresholds.

Cost fractions shown here come from the manifest: counted MACs (head costs included) unless
`edgesdk calibrate --profile DB` chose the thresholds from measured costs. There is no
``inspect --profile``: the fractions need the calibration data, which the bundle does not keep.
"""
import json

from edgesdk.bundle import read_bundle
from edgesdk.manifest import precision_of
from edgesdk.table import format_table, printable, printable_copy


def add_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


def _size(n):
    return "{:.1f} KiB".format(n / 1024.0) if n < 1 << 20 else "{:.2f} MiB".format(n / float(1 << 20))


# What a cost fraction from the manifest's MAC counts means: the mean over samples of the
# stages and heads each one runs (early heads included) over every stage plus the last head.
MAC_FRACTION = ("fractions of the full model's counted MACs, head costs included; no measured "
                "profile behind them: `edgesdk calibrate --profile DB` uses measured costs")


def _uncounted_lines(m):
    """The nodes each graph's MAC count leaves out (recorded by convert), if any."""
    graphs = [e for e in m["stages"] + m["exits"] if e.get("macs_uncounted")]
    if not graphs:
        return []
    lines = ["", "MACs not counted (the counts marked >= are too low, and so are cost "
                 "fractions built on them):"]
    for e in graphs:
        lines += ["  {}: {} ({}): {}".format(e["id"], n["node"], n["op"], n["why"])
                  for n in e["macs_uncounted"]]
    return lines


def _calibration_lines(m):
    """What `edgesdk calibrate` expects of the thresholds it chose, with what the cost
    fraction is a fraction of: counted MACs, or the measured costs of a profile."""
    chosen = next((e["chosen_from"] for e in m["exits"][:-1]
                   if (e.get("chosen_from") or {}).get("method") == "calibrate"), None)
    expected = (chosen or {}).get("expected")
    if not expected or expected.get("mean_cost_fraction") is None:
        return []
    profile = chosen.get("profile")
    if profile:
        basis = "fraction of the full model's measured {} (profile of device {}, {})".format(
            profile.get("metric", expected.get("unit", "?")), profile.get("device", "?"),
            profile.get("db", "?"))
    else:
        basis = MAC_FRACTION
    lines = ["", "calibrated on {} samples: expected accuracy {:.2%} (final exit {:.2%}), mean "
             "cost {:.1%}".format((chosen.get("data") or {}).get("samples", "?"),
                                  expected["accuracy"], expected["final_exit_accuracy"],
                                  expected["mean_cost_fraction"]),
             "  ({})".format(basis)]
    if not profile and any(e.get("macs_uncounted") for e in m["stages"] + m["exits"]):
        lines.append("  warning: some MAC counts leave nodes out (above): this fraction is "
                     "not reliable")
    return lines


def _cascade_lines(bundle, m):
    """A resolution cascade's levels: resolution, threshold, MACs per sample, where each is."""
    spec = m.get("cascade")
    if not spec:
        return []
    rows = []
    for level in spec["levels"]:
        sub = m if level["bundle"] == "." else read_bundle(bundle.path(level["bundle"]),
                                                           verify=False).manifest
        macs = sum(e["macs"] for e in sub["stages"]) + sub["exits"][-1]["macs"]
        rows.append([level["id"], "{}x{}".format(*level["resolution"]), level["policy"],
                     "last" if level["threshold"] is None else "{:.6g}".format(level["threshold"]),
                     "{:.2f}M".format(macs / 1e6), printable(level["bundle"])])
    pipe = spec["pipeline"]
    return ["", "resolution cascade (raw images: crop {}, resize {}), cheapest level first:"
            .format(pipe.get("crop") or "none", pipe["resize"]),
            format_table(["level", "resolution", "policy", "threshold", "MACs (all stages)",
                          "bundle"], rows)]


def _adaptive_lines(m):
    """What runs in place of a stage's own graph: a gate, width variants, a masked block's
    sparse graphs, gated blocks."""
    lines = []
    for e in m["stages"]:
        parts = []
        if e.get("gate"):
            parts.append("skipped when its gate's sigmoid >= {:.4g}".format(e["gate"]["threshold"]))
        if e.get("widths"):
            w = e["widths"]
            parts.append("width variants {} ({} router)".format(
                ", ".join("{:.0%}".format(v["width"]) for v in w["variants"]), w["router"]["name"]))
        if e.get("spatial"):
            parts.append("run on active {g}x{g} regions (keep when sigmoid >= {t:.4g})".format(
                g=e["spatial"]["granularity"], t=e["spatial"]["threshold"]))
        gated = e.get("gated")
        if gated:
            blocks = ", ".join("{:.4g} (saves {:.2f}M MACs)".format(b["threshold"], b["macs"] / 1e6)
                               for b in gated["blocks"])
            parts.append("{} gated blocks, skip thresholds {}{}{}".format(
                len(gated["blocks"]), blocks, "; DROPPED: " + gated["dropped"]["reason"]
                if gated.get("dropped") else "",
                "; gates dropped (always computed): {}".format(gated["dropped_gates"]["reason"])
                if gated.get("dropped_gates") else ""))
        if parts:
            lines.append("  {}: {}".format(e["id"], "; ".join(parts)))
    return ["", "input-adaptive stages:"] + lines if lines else []


def run(args):
    """Print the bundle summary (hashes are verified first)."""
    bundle = read_bundle(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2, sort_keys=True))   # JSON escapes control characters
        return 0
    m = printable_copy(m)   # every string printed below comes from the bundle
    files = m["files"]
    inp = m["inputs"][0]
    print("bundle   {}  ({})".format(m["name"], printable(bundle.root)))
    print("target   {}   schema {}   edgesdk {}   created {}".format(
        m["target"], m["schema_version"], m["sdk_version"], m.get("created", "?")))
    print("input    {} {} {}   preprocessing {}".format(
        inp["name"], inp["dtype"], ["N" if d is None else d for d in inp["shape"]],
        json.dumps(inp.get("preprocessing"))))
    from edgesdk.runtime.input_stats import describe_input
    for line in describe_input(inp):
        print("         " + line)
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
            others = [b.get("device") or precision_of(b)
                      for b in entry.get("builds") or [] if b["file"] != entry["file"]]
            build = "{} {}".format(entry["format"], precision_of(entry))
            pruned = "{:.0%}".format(ratios[k]) if ratios and kind == "stage" else ""
            # ">=": the count leaves nodes out (listed below the table), so it is too low.
            macs = ("" if not entry.get("macs_uncounted") else ">=") + "{:.2f}M".format(
                entry["macs"] / 1e6)
            rows.append([entry["id"], build + (" (+{})".format(",".join(others)) if others else ""),
                         pruned, macs, _size(f["bytes"]),
                         f["sha256"][:12], policy, thr, chosen])
    print(format_table(["graph", "build (other builds)", "pruned", "MACs", "size", "sha256",
                        "policy", "threshold", "chosen by"], rows))
    for line in _uncounted_lines(m) + _adaptive_lines(m) + _cascade_lines(bundle, m):
        print(line)
    for line in _calibration_lines(m):
        print(line)
    q = m.get("quantization") or {}
    if q.get("exit_table"):
        from edgesdk.cli.convert import exit_table_text
        print("\nselected builds vs fp32 on {} calibration samples (costs: {}):".format(
            q.get("exit_table_samples", "?"), MAC_FRACTION))
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
