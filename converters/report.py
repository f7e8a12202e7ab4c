"""`edgesdk report DB`: a Markdown and an HTML page with PNG plots from a profile database.

Per bundle and device: per-stage cost bars; accuracy vs predicted mean latency (and energy,
where measured) over exit thresholds with the Pareto front, replayed from the exit scores the
profiler stored; the exit histogram of the latest measured run; predicted vs measured cost of
every measured run. Everything comes from the database: the bundle and the data are not needed.
"""
import html
import os
import re

import numpy as np

from edgesdk.deps import require
from edgesdk.profiles import ProfileStore, ProfileStoreError
from edgesdk.converters.calibrate import ExitSimulator
from edgesdk.converters.cost_model import table_from_rows
from edgesdk.runtime.policies import get_policy

SWEEP_POINTS = 40


def pareto(points):
    """Indices of points (cost, accuracy) not beaten by a cheaper-or-equal, more accurate one."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -1.0
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _graph_ids(rows):
    """stageK / exitK ids found in the rows, in order."""
    ks = sorted({int(m.group(1)) for r in rows for m in [re.match(r"^stage(\d+)$", r["graph"])] if m})
    return ["stage{}".format(k) for k in ks], ["exit{}".format(k) for k in ks]


def _sweep(sim):
    """Operating points for one shared threshold over every early exit, plus 'exits off'."""
    pooled = np.concatenate(sim.scores[:-1]) if sim.k > 1 else np.zeros(0)
    cands = np.unique(np.quantile(pooled, np.linspace(0, 1, SWEEP_POINTS))) if pooled.size else []
    points = [sim.evaluate([None] * sim.k)]
    points += [sim.evaluate([float(t)] * (sim.k - 1) + [None]) for t in cands]
    return points


def _plot_tradeoff(plt, points, unit, what, path, title):
    costs = [p.mean_cost for p in points]
    accs = [100 * p.accuracy for p in points]
    front = pareto(list(zip(costs, accs)))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(costs, accs, s=14, color="tab:gray", label="one threshold for every exit")
    ax.plot([costs[i] for i in front], [accs[i] for i in front], "o-", color="tab:red",
            label="Pareto front")
    ax.set_xlabel("predicted mean {} per sample ({})".format(what, unit))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


def _plot_bars(plt, table, path, title):
    k = np.arange(len(table.stage))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(k, table.stage, label="stage (incl. runtime work)" if table.unit == "ms" else "stage")
    ax.bar(k, table.head, bottom=table.stage, label="exit head")
    ax.set_xticks(k)
    ax.set_xticklabels(["stage {}".format(i) for i in k])
    ax.set_ylabel("{} per sample ({})".format(table.metric, table.unit))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_hist(plt, counts, path, title):
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.bar(range(len(counts)), counts, color="tab:green")
    ax.set_xticks(range(len(counts)))
    ax.set_xlabel("exit")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pred(plt, pairs, path):
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    pred, meas = [p for p, _ in pairs], [m for _, m in pairs]
    ax.scatter(meas, pred, color="tab:purple")
    hi = max(pred + meas) * 1.1
    ax.plot([0, hi], [0, hi], "--", color="gray", label="predicted = measured")
    ax.set_xlabel("measured mean latency (ms)")
    ax.set_ylabel("predicted mean latency (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compression_section(bundle_path):
    """Markdown lines describing a bundle's compression: each graph's build, the per-exit
    table of the selected builds vs FP32, and the pruning record."""
    from edgesdk.bundle import read_bundle
    from edgesdk.profiles import graphs_sha256
    m = read_bundle(bundle_path).manifest
    q = m.get("quantization") or {}
    md = ["## compression of bundle {} (graphs {})".format(m["name"], graphs_sha256(m)[:12]), "",
          "Target {}; selected precision: {}{}.".format(
              m["target"], q.get("selected", "fp32"),
              "; " + q["source"] if q.get("source") else ""), ""]
    md += ["| graph | build | other builds |", "|---|---|---|"]
    for e in m["stages"] + m["exits"]:
        others = ["{} (agreement {:.2%})".format(b["precision"], b["top1_agreement"])
                  for b in e.get("builds") or [] if b["file"] != e["file"] and "top1_agreement" in b]
        md.append("| {} | {} {} | {} |".format(e["id"], e["format"], e.get("precision", "fp32"),
                                              ", ".join(others) or "-"))
    md.append("")
    rows = q.get("exit_table")
    if rows:
        def pct(v):
            return "-" if v is None else "{:.2%}".format(v)
        md += ["Per exit, on {} calibration samples (last row: thresholds recalibrated for each, "
               "cost as a fraction of the full model's MACs):".format(q.get("exit_table_samples", "?")), "",
               "| exit | accuracy fp32 | accuracy selected | top-1 agreement |", "|---|---|---|---|"]
        for r in rows:
            cost = ["" if r.get("cost_" + k) is None else " at {:.0%}".format(r["cost_" + k])
                    for k in ("fp32", "selected")]
            md.append("| {} | {}{} | {}{} | {} |".format(
                r["exit"], pct(r["accuracy_fp32"]), cost[0], pct(r["accuracy_selected"]), cost[1],
                pct(r["agreement"])))
        md.append("")
    for r in m.get("pruning") or []:
        if r.get("kind") == "structured":
            md += ["Pruned with {} {} ({} importance, stage ratios {}): {:.1f}M -> {:.1f}M MACs.".format(
                r["tool"], r["tool_version"], r["importance"], r["stage_ratios"],
                r["macs_before"] / 1e6, r["macs_after"] / 1e6), ""]
            for name, accs in (r.get("exit_accuracy") or {}).items():
                md += ["- {}: {}".format(name, ", ".join("exit {} {:.2%}".format(k, a)
                                                         for k, a in enumerate(accs)))]
            md.append("")
        elif r.get("kind") == "unstructured":
            md += ["Unstructured sparsity {:.1%} (2:4 pattern: {}): {}.".format(
                r["sparsity"], "yes" if r["2:4"] else "no", r["note"]), ""]
    return md


def write_report(db, out_dir, bundle_paths=()):
    """Write ``report.md``, ``report.html`` and PNGs into ``out_dir``; returns the .md path.

    ``bundle_paths``: bundles whose compression (builds, per-exit table, pruning) is added."""
    # Bundles first: a wrong path fails before anything is written.
    sections = [compression_section(path) for path in bundle_paths]
    matplotlib = require("matplotlib", "plot", "draw report plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with ProfileStore(db, create=False) as store:
        bundles = store.bundles()
        if not bundles:
            raise ProfileStoreError("{} holds no measurements (empty table): run `edgesdk profile "
                                    "BUNDLE --db {}` first".format(db, db))
        data = [(b, store.rows(bundle_sha256=b), store.exit_scores(b), store.runs(b)) for b in bundles]
        devices = store.devices()
    os.makedirs(out_dir, exist_ok=True)
    md = ["# edgesdk profile report", "", "Database: `{}`".format(db), ""]
    for b, rows, scores, runs in data:
        for device in sorted({r["device"] for r in rows}):
            drows = [r for r in rows if r["device"] == device and r["batch"] == 1]
            if not drows:
                continue
            tag = "{}-{}".format(b[:10], device[:10])
            stage_ids, head_ids = _graph_ids(drows)
            desc = devices.get(device, {})
            md += ["## bundle {} on device {}".format(b[:12], device), "",
                   "Device: {}".format(", ".join("{} {}".format(k, v) for k, v in sorted(desc.items()))
                                       or "(not described)"), ""]
            tables = {"latency": table_from_rows(drows, "mean_ms", stage_ids, head_ids, device, b)}
            try:
                tables["energy"] = table_from_rows(drows, "energy_mj", stage_ids, head_ids, device, b)
            except ProfileStoreError:
                md += ["Energy: no sensor on this device; latency only.", ""]
            md += ["| graph | latency ms/sample | energy mJ/sample |", "|---|---|---|"]
            for i, gid in enumerate(stage_ids + head_ids):
                kind, k = ("stage", i) if i < len(stage_ids) else ("head", i - len(stage_ids))
                e = tables.get("energy")
                md.append("| {} | {:.4f} | {} |".format(gid, getattr(tables["latency"], kind)[k],
                                                        "{:.4f}".format(getattr(e, kind)[k]) if e else "-"))
            md.append("")
            for name, table in tables.items():
                png = "costs-{}-{}.png".format(name, tag)
                _plot_bars(plt, table, os.path.join(out_dir, png), "per-stage {} (batch 1)".format(name))
                md += ["![{} per stage]({})".format(name, png), ""]
            pairs = []
            for (dataset, policy), (sc, corr) in sorted(scores.items()):
                for name, table in tables.items():
                    sim = ExitSimulator.from_scores(sc, corr, get_policy(policy), table.stage, table.head)
                    points = _sweep(sim)
                    png = "tradeoff-{}-{}-{}.png".format(name, tag, dataset[:8])
                    front = _plot_tradeoff(plt, points, table.unit, name, os.path.join(out_dir, png),
                                           "{} samples (data {}), policy {}".format(
                                               sim.n, dataset[:8], policy))
                    md += ["![accuracy vs {}]({})".format(name, png), "",
                           "Pareto front ({}): {}".format(name, ", ".join(
                               "{:.3g} {} -> {:.2%}".format(points[i].mean_cost, table.unit,
                                                            points[i].accuracy) for i in front)), ""]
                    if name != "latency":
                        continue
                    for run in runs:
                        if run["dataset_sha256"] == dataset and run["device"] == device:
                            p = sim.evaluate(run["thresholds"]).mean_cost
                            pairs.append((p, run["mean_ms"]))
            if runs:
                last = [r for r in runs if r["device"] == device] or runs
                png = "exits-{}.png".format(tag)
                _plot_hist(plt, last[-1]["exit_counts"], os.path.join(out_dir, png),
                           "exits taken, latest run ({} samples)".format(last[-1]["samples"]))
                md += ["![exit histogram]({})".format(png), ""]
            if pairs:
                png = "predicted-{}.png".format(tag)
                _plot_pred(plt, pairs, os.path.join(out_dir, png))
                md += ["| run | predicted ms | measured ms | error |", "|---|---|---|---|"]
                md += ["| {} | {:.4f} | {:.4f} | {:+.1%} |".format(i + 1, p, m, (p - m) / m)
                       for i, (p, m) in enumerate(pairs)]
                md += ["", "![predicted vs measured]({})".format(png), ""]
    for lines in sections:
        md += lines
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(out_dir, "report.html"), "w") as f:
        f.write(_html(md))
    return md_path


def _html(md_lines):
    """The Markdown page as simple HTML (headings, tables, images, paragraphs)."""
    out = ["<!doctype html><meta charset='utf-8'><title>edgesdk profile report</title>",
           "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>"]
    in_table = False
    for line in md_lines:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join("<th>{}</th>".format(html.escape(c)) for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join("<td>{}</td>".format(html.escape(c)) for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        m = re.match(r"^!\[(.*)\]\((.*)\)$", line)
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append("<h{0}>{1}</h{0}>".format(level, html.escape(line.lstrip("# "))))
        elif m:
            out.append("<p><img alt='{}' src='{}'></p>".format(html.escape(m.group(1)),
                                                              html.escape(m.group(2))))
        elif line:
            out.append("<p>{}</p>".format(html.escape(line.replace("`", ""))))
    if in_table:
        out.append("</table>")
    return "\n".join(out) + "\n"

