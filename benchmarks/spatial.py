"""Spatially sparse execution: a ResNet-style model with masked residual blocks on real MNIST
digits upsampled to 56x56, sparse vs dense latency at 25/50/75% active regions, one run.

Model: a stem (3x3 conv, 128 channels, 56x56) and two masked residual blocks (a 3x3 and a
1x1 conv of 128 channels; a masker of average pooling and a 1x1 conv gives one logit per
14x14 region, 16 regions per image), a linear head on 4x4 average-pooled features per stage.
128 channels rather than 64: the gather and scatter move data in proportion to the
channels, the convolutions compute in proportion to their square, so wider blocks show
what sparse execution saves where the compute is (at 64 channels the copies alone cost
0.2x of the dense block). Trained briefly (``--epochs`` on the 3000 training digits,
upsampled 2x; 2 min per epoch on 2 cores) with the straight-through mask and a loss that
keeps about half of the regions active. Converted once; for each target fraction every
block's threshold is set on the calibration split (the quantile of its region logits that
leaves that fraction active), then the bundle runs all stages with exits off on the test
digits, sparse (active regions only) and dense (every region: the same network with the
mask at 1), interleaved in rounds, at batch 1 and batch 16. Then calibrated: the bundle is
profiled (each masked block timed at 0/25/50/75/100% active regions) and
``calibrate_spatial`` picks the common keep threshold that computes the most regions within
a budget of 0.9x the dense batch-1 latency measured at the 50% setting; that setting is
measured the same way, its predicted latency beside the measured one.

Reported per fraction: measured active share, accuracy masked vs dense (the drop), latency
sparse / dense, the MAC-predicted ratio (stem + masker + the patch graph's MACs per active
region with its halo, over the dense MACs) and measured speedup / predicted speedup. Goals:
<= 0.6x dense latency at 50% active with <= 0.5 points lost; measured speedup >= 0.8x the
MAC-predicted one. The last line is one JSON object.
"""
import datetime
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from common import SAMPLE, cpu, print_cpu, sample_parser

GOAL_RATIO, GOAL_DROP, GOAL_EFFICIENCY = 0.6, 0.5, 0.8
BUDGET_SHARE = 0.9   # the calibrated setting's budget: this share of the dense latency
WIDTH, SIZE, REGION = 128, 56, 14


def masked_net():
    """Stem + two masked residual blocks at 56x56, a pooled head per stage."""
    from torch import nn
    from edgesdk.converters import MultiExitModel
    from edgesdk.converters.spatial import MaskedBlock

    def conv_bn(c_in, c_out, relu=True):
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out)]
        return layers + ([nn.ReLU()] if relu else [])

    def block():   # a 3x3 then a 1x1 convolution: a halo of 1 pixel around each region
        branch = nn.Sequential(*conv_bn(WIDTH, WIDTH) + [
            nn.Conv2d(WIDTH, WIDTH, 1, bias=False), nn.BatchNorm2d(WIDTH)])
        masker = nn.Sequential(nn.AvgPool2d(REGION), nn.Conv2d(WIDTH, 1, 1))
        return MaskedBlock(branch, masker, granularity=REGION, threshold=0.5)

    def head():   # a 4x4 pooled layout: digits need where strokes are, not only which
        return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(WIDTH * 16, 10))
    return MultiExitModel([nn.Sequential(*conv_bn(1, WIDTH)), block(), block()],
                          [head() for _ in range(3)])


def upsampled(images):
    """uint8 (N, 28, 28) digits as normalised float32 model input (N, 1, 56, 56)."""
    from data import to_model_input
    x = to_model_input(images)
    return np.ascontiguousarray(x.repeat(2, axis=2).repeat(2, axis=3))


def train(net, x, y, epochs, target=0.5, weight=2.0):
    """Adam on every exit's cross-entropy plus ``weight`` x (active share - target)^2 per
    masked block (its soft share of active regions)."""
    import torch
    blocks = [s for s in net.stages if getattr(s, "edgesdk_spatial", False)]
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt))
        start = time.time()
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            logits = net(xt[idx])
            loss = sum(torch.nn.functional.cross_entropy(l, yt[idx]) for l in logits)
            loss = loss + weight * sum((b.active_fraction - target) ** 2 for b in blocks)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print("epoch {}/{}: loss {:.3f}, active {} ({:.0f}s)".format(
            epoch + 1, epochs, float(loss.detach()),
            [round(float(b.active_fraction.detach()), 2) for b in blocks],
            time.time() - start), file=sys.stderr)
    return net.eval()


def block_logits(net, x, batch=100):
    """Each masked block's region logits on ``x`` (PyTorch, in batches), in stage order."""
    import torch
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out, state = [], (torch.from_numpy(x[i:i + batch]),)
            for stage in net.stages:
                if getattr(stage, "edgesdk_spatial", False):
                    out.append(stage.masker(state[0]).numpy().ravel())
                state = (stage(*state),)
            parts.append(out)
    return [np.concatenate(p) for p in zip(*parts)]


def patch_macs(bundle, stage):
    """MACs of one patch through a stage's patch graph."""
    import onnx
    from edgesdk.converters.macs import count_macs
    spec = stage["spatial"]
    size = spec["granularity"] + 2 * spec["halo"]
    graph = onnx.load(bundle.path(spec["patch"]["file"]))
    c = stage["output_shapes"][0][1]
    shapes = {"patches": (1, c, size, size), "valid": (1, 1, size, size)}
    return count_macs(graph, {name: np.ones(shapes[name], np.float32)
                              for name in spec["patch"]["inputs"]}).total


def mean_ms(model, x, batch):
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        model.run(x[i:i + batch], early_exit=False)
    return (time.perf_counter() - start) * 1000.0 / len(x)


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.set_defaults(epochs=3, samples=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print_cpu()
    import torch
    sys.path.insert(0, SAMPLE)
    from data import load_splits
    from edgesdk.converters import convert
    from edgesdk.converters.spatial_calibration import calibrate_spatial
    from edgesdk.errors import CalibrationError
    from edgesdk.profiles import ProfileRecorder
    from edgesdk.runtime import load_bundle
    from edgesdk.runtime.profiler import profile_graphs
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    splits = load_splits()
    (xtr, ytr), (xc, yc), (xte, yte) = (splits[k] for k in ("train", "calibration", "test"))
    xtr, xc, xte = upsampled(xtr), upsampled(xc), upsampled(xte)
    net = train(masked_net(), xtr, ytr, args.epochs)
    work = tempfile.mkdtemp(prefix="edgesdk-spatial-")
    path = os.path.join(work, "masked.edgebundle")
    convert(net, xc[:8], path, progress=False, threads=args.threads)
    model = load_bundle(path, threads=args.threads)
    m = model.bundle.manifest
    stages = model.spatial_stages()
    logits = block_logits(net, xc)
    dense_macs = [e["macs"] for e in m["stages"]] + [m["exits"][-1]["macs"]]
    spatial = [e for e in m["stages"] if e.get("spatial")]
    per_patch = [patch_macs(model.bundle, e) for e in spatial]
    regions = (SIZE // REGION) ** 2
    xt = xte[:args.samples]
    rows = []

    def measure(row):
        """Latency sparse vs dense (interleaved rounds, batch 1 and 16), active shares and
        accuracy at the stages' current thresholds, into ``row``."""
        times = {(kind, b): [] for kind in ("sparse", "dense") for b in (1, 16)}
        for _ in range(args.rounds):
            for (kind, b) in times:
                for s in stages:
                    s.enabled = kind == "sparse"
                times[(kind, b)].append(mean_ms(model, xt, b))
        for s in stages:
            s.enabled, s.active, s.regions = True, 0, 0
        labels = model.exit_logits(xte, batch_size=32)[-1].argmax(axis=1)
        active = [s.active / float(s.regions) for s in stages]
        for s in stages:
            s.enabled = False
        dense_labels = model.exit_logits(xte, batch_size=32)[-1].argmax(axis=1)
        for s in stages:
            s.enabled = True
        # The masker's MACs (a 1x1 conv on 4x4 pooled values) are negligible beside these.
        sparse_macs = sum(dense_macs) - sum(e["macs"] for e in spatial) + sum(
            a * regions * p for a, p in zip(active, per_patch))
        predicted = sparse_macs / float(sum(dense_macs))
        row.update({"active": [round(a, 3) for a in active],
                    "accuracy": float((labels == yte).mean()),
                    "accuracy_dense": float((dense_labels == yte).mean()),
                    "dense_ms_b1": float(np.median(times[("dense", 1)]))})
        for b in (1, 16):
            ratio = float(np.median(times[("sparse", b)]) / np.median(times[("dense", b)]))
            row["ratio_b{}".format(b)] = round(ratio, 3)
            row["efficiency_b{}".format(b)] = round((1 / ratio) / (1 / predicted), 3)
        row["predicted_ratio"] = round(predicted, 3)
        row["drop_points"] = round(100 * (row["accuracy_dense"] - row["accuracy"]), 2)
        print("active {} (measured {}): accuracy {:.2%} vs dense {:.2%}; sparse/dense "
              "{:.3f} at batch 1, {:.3f} at batch 16; MAC-predicted {:.3f}; measured speedup / "
              "predicted {:.2f} (batch 1)".format(
                  row["setting"], row["active"], row["accuracy"], row["accuracy_dense"],
                  row["ratio_b1"], row["ratio_b16"], predicted, row["efficiency_b1"]))
        return row

    for fraction in (0.25, 0.5, 0.75):
        for stage, lg in zip(stages, logits):
            stage.logit = float(np.quantile(lg, 1.0 - fraction))
        rows.append(measure({"target_active": fraction,
                             "setting": "{:.0%}".format(fraction)}))
    # Calibrated: the profile's latency predictor per active fraction, a budget of
    # BUDGET_SHARE x the dense model's measured batch-1 latency, the most regions within it.
    db = os.path.join(work, "profile.sqlite")
    record = ProfileRecorder(db, m)
    profile_graphs(model, [1], progress=record)
    record.close()
    budget = BUDGET_SHARE * rows[1]["dense_ms_b1"]
    try:
        chosen = calibrate_spatial(path, xc, budget, db, y=yc, threads=args.threads)
        model = load_bundle(path, threads=args.threads)
        stages = model.spatial_stages()
        calibrated = measure({"setting": "calibrated", "budget_ms": round(budget, 4),
                              "threshold": chosen["chosen"]["threshold"],
                              "predicted_ms": round(chosen["chosen"]["predicted_ms"], 4)})
        calibrated["measured_ms"] = round(calibrated["ratio_b1"] * calibrated["dense_ms_b1"], 4)
        print("calibrated under {:.4f} ms: threshold {}, predicted {:.4f} ms, measured {:.4f} "
              "ms".format(budget, calibrated["threshold"], calibrated["predicted_ms"],
                          calibrated["measured_ms"]))
    except CalibrationError as e:
        calibrated = {"setting": "calibrated", "budget_ms": round(budget, 4), "refused": str(e)}
        print("calibration: {}".format(e))
    half = rows[1]
    goals = {"ratio_at_50": half["ratio_b1"] <= GOAL_RATIO,
             "drop_at_50": half["drop_points"] <= GOAL_DROP,
             "efficiency_at_50": half["efficiency_b1"] >= GOAL_EFFICIENCY}
    print("goals met: {}".format(goals))
    print(json.dumps({"date": datetime.date.today().isoformat(), "machine": "{} cores {}".format(
        os.cpu_count(), platform.machine()), **cpu(), "threads": args.threads,
        "epochs": args.epochs, "samples": int(len(xt)), "rounds": args.rounds,
        "regions_per_block": regions, "halo": spatial[0]["spatial"]["halo"],
        "patch_macs": per_patch, "dense_macs": dense_macs, "rows": rows,
        "calibrated": calibrated, "goals_met": goals}))


if __name__ == "__main__":
    main()
