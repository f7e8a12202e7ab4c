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
from edgesdk.manifest import precision_of
from edgesdk.profiles import NOISY_SPREAD, ProfileStore, ProfileStoreError
from edgesdk.converters.calibrate import ExitSimulator
from edgesdk.converters.cost_model import LATENCY_STATISTIC, table_from_rows
from edgesdk.runtime.policies import get_policy

SWEEP_POINTS = 40
SPREAD_RANGE = "p10 to p90 of the calls"


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


def _plot_tradeoff(plt, points, marks, unit, what, path, title):
    """Accuracy vs predicted cost over thresholds, the Pareto front, and the marked points
    (``marks``: ``[(label, OperatingPoint, matplotlib style)]``, e.g. exits off, calibrated)."""
    costs = [p.mean_cost for p in points]
    accs = [100 * p.accuracy for p in points]
    front = pareto(list(zip(costs, accs)))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(costs, accs, s=14, color="tab:gray", label="one threshold for every early exit")
    ax.plot([costs[i] for i in front], [accs[i] for i in front], "o-", color="tab:red",
            label="best trade-offs (Pareto front)")
    for label, point, style in marks:
        ax.plot([point.mean_cost], [100 * point.accuracy], style[0], ms=style[1], color=style[2],
                label=label, zorder=5)
    ax.set_xlabel("predicted mean {} per input ({})".format(what, unit))
    ax.set_ylabel("accuracy on the labelled inputs (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


def _plot_bars(plt, table, spread, path, title):
    """Per-stage cost bars (stage + its head stacked); ``spread``: per stage, the whisker
    ``(low, high)`` of the stage's per-call latency in the same unit, or None."""
    k = np.arange(len(table.stage))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(k, table.stage, label="stage (with the runtime's own work)" if table.unit == "ms"
           else "stage")
    ax.bar(k, table.head, bottom=table.stage, label="exit head")
    if spread is not None:
        lo = [max(0.0, v - a) for v, (a, _) in zip(table.stage, spread)]
        hi = [max(0.0, b - v) for v, (_, b) in zip(table.stage, spread)]
        ax.errorbar(k, table.stage, yerr=[lo, hi], fmt="none", ecolor="black", capsize=4,
                    label="stage spread ({})".format(SPREAD_RANGE))
    ax.set_xticks(k)
    ax.set_xticklabels(["stage {}".format(i) for i in k])
    ax.set_ylabel("{} per input ({})".format(
        "latency" if table.unit == "ms" else "energy", table.unit))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_hist(plt, counts, path, title):
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.bar(range(len(counts)), counts, color="tab:green")
    ax.set_xticks(range(len(counts)))
    ax.set_xlabel("exit taken")
    ax.set_ylabel("number of inputs")
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
    ax.set_xlabel("measured mean latency per input (ms)")
    ax.set_ylabel("predicted mean latency per input (ms)")
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
        md.append("| {} | {} {} | {} |".format(e["id"], e["format"], precision_of(e),
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


def device_words(desc):
    """A device description in words: ``"AMD EPYC 7B13 (x86_64, 2 cores), Linux 6.1"``."""
    if not desc:
        return "(not described)"
    main = desc.get("cpu") or desc.get("machine") or "unknown CPU"
    extra = ", ".join(v for v in (desc.get("machine"), "{} cores".format(desc["cores"])
                                  if desc.get("cores") else None) if v)
    system = " ".join(str(desc[k]) for k in ("system", "release") if desc.get(k))
    return "{}{}{}".format(main, " ({})".format(extra) if extra else "",
                           ", " + system if system else "")


def _spread(rows, ids):
    """Per graph id: ``(low, high, p90/p50)`` of its per-call latency per input at batch 1
    (low: p10 where stored, else p50), from the rows; graphs without percentiles are left out."""
    values = {}
    for r in rows:
        if r["value"] is not None and r["metric"] in ("p10_ms", "p50_ms", "p90_ms"):
            values.setdefault(r["graph"], {})[r["metric"]] = r["value"] / r["batch"]
    out = {}
    for gid in ids:
        v = values.get(gid, {})
        if "p50_ms" in v and "p90_ms" in v:
            out[gid] = (v.get("p10_ms", v["p50_ms"]), v["p90_ms"],
                        v["p90_ms"] / v["p50_ms"] if v["p50_ms"] > 0 else float("inf"))
    return out


def _cost_lines(tables, spread, ids):
    """The per-graph cost table (Markdown), noisy rows flagged."""
    md = ["| graph | latency ms/input | p90/p50 | energy mJ/input |", "|---|---|---|---|"]
    n = len(tables["latency"].stage)
    for i, gid in enumerate(ids):
        kind, k = ("stage", i) if i < n else ("head", i - n)
        e = tables.get("energy")
        ratio = spread.get(gid, (None, None, None))[2]
        md.append("| {} | {:.4f} | {} | {} |".format(
            gid, getattr(tables["latency"], kind)[k],
            "-" if ratio is None else "{:.2f}{}".format(ratio, " (noisy)" if ratio > NOISY_SPREAD
                                                        else ""),
            "{:.4f}".format(getattr(e, kind)[k]) if e else "-"))
    noisy = [gid for gid in ids if spread.get(gid, (0, 0, 0))[2] > NOISY_SPREAD]
    md.append("")
    if noisy:
        md += ["Noisy measurements (p90 more than {}x p50): {}. Profile again on a quieter "
               "machine or with more repeats before trusting them.".format(
                   NOISY_SPREAD, ", ".join(noisy)), ""]
    return md, noisy


def _section(plt, out_dir, b, device, drows, scores, runs, desc, names):
    """Markdown lines, plot files and a JSON summary for one bundle on one device."""
    conditions = drows[0]["conditions"]
    tag = "{}-{}".format(b[:10], device[:10])
    if conditions:   # one section (and plot files) per set of run conditions
        import hashlib
        tag += "-" + hashlib.sha256(conditions.encode("utf-8")).hexdigest()[:6]
    stage_ids, head_ids = _graph_ids(drows)
    named = names.get(b)
    title = "{} (target {})".format(named["name"], named["target"]) if named else \
        "bundle {}".format(b[:12])
    md = ["## {} on {}".format(title, device_words(desc)), "",
          "Bundle graphs sha256 {}, device fingerprint {}, run conditions: {}.".format(
              b[:16], device, conditions.replace(";", ", ") or "not recorded"), ""]
    metric = LATENCY_STATISTIC
    tables = {"latency": table_from_rows(drows, metric, stage_ids, head_ids, device, b)}
    try:
        tables["energy"] = table_from_rows(drows, "energy_mj", stage_ids, head_ids, device, b)
    except ProfileStoreError:
        md += ["Energy: no sensor on this device; latency only.", ""]
    spread = _spread(drows, stage_ids + head_ids)
    lines, noisy = _cost_lines(tables, spread, stage_ids + head_ids)
    md += ["Costs are per input at batch 1 ({} of the timed calls).".format(metric), ""] + lines
    plots = []
    whiskers = None
    if all(g in spread for g in stage_ids):
        # The bars add the engine's own work to each stage; the whiskers move with them.
        own = {r["graph"]: r["value"] / r["batch"] for r in drows
               if r["metric"] == metric and r["value"] is not None}
        whiskers = [(spread[g][0] + v - own[g], spread[g][1] + v - own[g])
                    for g, v in zip(stage_ids, tables["latency"].stage)]
    for name, table in tables.items():
        png = "costs-{}-{}.png".format(name, tag)
        _plot_bars(plt, table, whiskers if name == "latency" else None,
                   os.path.join(out_dir, png), "{} per stage and exit head, {}".format(name, title))
        plots.append(png)
        md += ["![{} per stage]({})".format(name, png), ""]
    summary = {"bundle_sha256": b, "bundle": named, "device": device, "conditions": conditions,
               "device_words": device_words(desc), "latency_metric": metric,
               "stage_ms": tables["latency"].stage, "head_ms": tables["latency"].head,
               "noisy": noisy, "tradeoffs": [], "predicted_vs_measured": []}
    for (dataset, policy), (sc, corr) in sorted(scores.items()):
        run = next((r for r in reversed(runs) if r["dataset_sha256"] == dataset
                    and r["device"] == device), None)
        for name, table in tables.items():
            sim = ExitSimulator.from_scores(sc, corr, get_policy(policy), table.stage, table.head)
            points = _sweep(sim)
            marks = [("early exits off", points[0], ("s", 8, "black"))]
            if run is not None:
                marks.append(("thresholds of the profiled run (calibrated)",
                              sim.evaluate(run["thresholds"]), ("*", 15, "tab:blue")))
            png = "tradeoff-{}-{}-{}.png".format(name, tag, dataset[:8])
            front = _plot_tradeoff(plt, points, marks, table.unit, name,
                                   os.path.join(out_dir, png),
                                   "{}: {} labelled inputs (data {}), {} policy".format(
                                       title, sim.n, dataset[:8], policy))
            plots.append(png)
            md += ["![accuracy vs {}]({})".format(name, png), "",
                   "Pareto front ({}): {}".format(name, ", ".join(
                       "{:.3g} {} -> {:.2%}".format(points[i].mean_cost, table.unit,
                                                    points[i].accuracy) for i in front)), ""]
            md += ["{}: {:.3g} {} at {:.2%} accuracy.".format(
                label[0].upper() + label[1:], p.mean_cost, table.unit, p.accuracy)
                for label, p, _ in marks] + [""]
            summary["tradeoffs"].append({
                "metric": name, "unit": table.unit, "dataset_sha256": dataset, "policy": policy,
                "samples": sim.n, "pareto": [[points[i].mean_cost, points[i].accuracy]
                                             for i in front],
                "marked": {label: [p.mean_cost, p.accuracy] for label, p, _ in marks}})
            if name == "latency":
                for r in runs:
                    if r["dataset_sha256"] == dataset and r["device"] == device:
                        summary["predicted_vs_measured"].append(
                            [sim.evaluate(r["thresholds"]).mean_cost, r["mean_ms"]])
    mine = [r for r in runs if r["device"] == device]
    if mine:
        png = "exits-{}.png".format(tag)
        _plot_hist(plt, mine[-1]["exit_counts"], os.path.join(out_dir, png),
                   "exits taken in the latest run ({} inputs), {}".format(mine[-1]["samples"], title))
        plots.append(png)
        md += ["![exit histogram]({})".format(png), ""]
    pairs = summary["predicted_vs_measured"]
    if pairs:
        png = "predicted-{}.png".format(tag)
        _plot_pred(plt, pairs, os.path.join(out_dir, png))
        plots.append(png)
        md += ["| run | predicted ms | measured ms | error |", "|---|---|---|---|"]
        md += ["| {} | {:.4f} | {:.4f} | {:+.1%} |".format(i + 1, p, m, (p - m) / m)
               for i, (p, m) in enumerate(pairs)]
        md += ["", "![predicted vs measured]({})".format(png), ""]
    return md, plots, summary


def write_report(db, out_dir, bundle_paths=()):
    """Write ``report.md``, ``report.html`` and PNGs into ``out_dir``.

    ``bundle_paths``: bundles whose compression (builds, per-exit table, pruning) is added.
    Returns ``{"markdown", "html", "plots", "sections"}``: the files written and, per bundle
    and device, what the page shows (costs, noisy graphs, trade-off points, predicted vs
    measured runs)."""
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
        devices, names = store.devices(), store.bundle_names()
    os.makedirs(out_dir, exist_ok=True)
    md = ["# edgesdk profile report", "", "Database: `{}`".format(db), ""]
    plots, summaries = [], []
    for b, rows, scores, runs in data:
        for device, conditions in sorted({(r["device"], r["conditions"]) for r in rows}):
            drows = [r for r in rows if r["device"] == device and r["conditions"] == conditions
                     and r["batch"] == 1]
            if drows:
                lines, files, summary = _section(plt, out_dir, b, device, drows, scores, runs,
                                                 devices.get(device, {}), names)
                md += lines
                plots += files
                summaries.append(summary)
    for lines in sections:
        md += lines
    md_path = os.path.join(out_dir, "report.md")
    html_path = os.path.join(out_dir, "report.html")
    with open(md_path, "w") as f:
        f.write("\n".join(md) + "\n")
    with open(html_path, "w") as f:
        f.write(_html(md))
    return {"markdown": md_path, "html": html_path, "plots": plots, "sections": summaries}


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

