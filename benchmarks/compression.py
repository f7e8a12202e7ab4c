"""Compression measured: INT8 and 50%-channel pruning, speed on a ResNet-18-sized model and
accuracy on the trained sample, in one run on this CPU.

Speed (random weights: timing only): a multi-exit ResNet-18 (4 stages of 2 basic blocks,
64-512 channels, an exit after each stage) at 224x224, batch 1, every stage run (no early
exit), through the edgesdk runtime; FP32 vs INT8 builds of the same bundle and vs a 50%
channel-pruned FP32 bundle, interleaved rounds. INT8 activation ranges come from Gaussian
inputs: meaningless for accuracy, enough for timing.

Accuracy (real MNIST digits, the sample model): final-exit test accuracy of FP32, INT8 (ranges
from the calibration split), and 50%-pruned after a short fine-tuning on the training split;
then thresholds re-calibrated for each (0.5 points at 99%) and the early-exit accuracy and
latency compared; and INT8 with exit-aware vs plain calibration.
The last line printed is one JSON object.
"""
import copy
import datetime
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from common import cpu, print_cpu, sample_parser


def resnet18_multi_exit(num_classes=1000):
    """A ResNet-18-sized multi-exit network (stem + 4 stages of 2 basic blocks, GAP heads)."""
    import torch
    from torch import nn
    from model import BasicBlock
    widths = (64, 128, 256, 512)
    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    stages, c_in = [], 64
    for k, w in enumerate(widths):
        blocks = [BasicBlock(c_in, w, 1 if k == 0 else 2), BasicBlock(w, w)]
        stages.append(nn.Sequential(*([stem] if k == 0 else []), *blocks))
        c_in = w
    heads = [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, num_classes))
             for w in widths]
    from edgesdk.converters import MultiExitModel
    torch.manual_seed(0)
    return MultiExitModel(stages, heads)


def bundle_bytes(path, precision="fp32"):
    """Total bytes of the graphs of one precision in a bundle."""
    from edgesdk.bundle import read_bundle
    m = read_bundle(path).manifest
    files = [b["file"] for e in m["stages"] + m["exits"] for b in e.get("builds") or [e]
             if b.get("precision", "fp32") == precision]
    return sum(m["files"][f]["bytes"] for f in files)


def interleaved_ms(models, x, rounds):
    """Median over rounds of the mean ms per sample (batch 1, no early exit), per model."""
    for m in models.values():
        m.run(x[:1], early_exit=False)
    ms = {k: [] for k in models}
    for r in range(rounds):
        for k in (list(models) if r % 2 == 0 else list(reversed(list(models)))):
            m = models[k]
            ms[k].append(float(np.mean([m.run(x[i:i + 1], early_exit=False).total_ms
                                        for i in range(len(x))])))
    return {k: float(np.median(v)) for k, v in ms.items()}


def speed(tmp, args):
    """int8_speedup, prune50_speedup and int8_size_ratio on the ResNet-18-sized model."""
    import torch
    from edgesdk.converters import convert
    from edgesdk.converters.pruning import prune_channels
    from edgesdk.runtime import load_bundle
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.timing_samples, 3, args.image_size, args.image_size)).astype(np.float32)
    cal = rng.standard_normal((32, 3, args.image_size, args.image_size)).astype(np.float32)
    net = resnet18_multi_exit().eval()
    full = os.path.join(tmp, "r18.edgebundle")
    convert(net, x[:2], full, precisions=["int8"], calibration_data=cal, threads=args.threads,
            progress=False)
    pruned_net = copy.deepcopy(net)
    record = prune_channels(pruned_net, torch.from_numpy(x[:2]), ratio=0.5)
    pruned = os.path.join(tmp, "r18-pruned.edgebundle")
    convert(pruned_net, x[:2], pruned, pruning=[record], threads=args.threads, progress=False)
    ms = interleaved_ms({"fp32": load_bundle(full, threads=args.threads),
                         "int8": load_bundle(full, threads=args.threads, builds="int8"),
                         "pruned": load_bundle(pruned, threads=args.threads)}, x, args.rounds)
    return ms, bundle_bytes(full, "int8") / float(bundle_bytes(full)), record


def early_exit_point(path, xc, yc, xt, yt, threads):
    """Calibrate thresholds (0.5 points at 99%) and measure test accuracy and ms/sample."""
    from edgesdk.converters import calibrate
    from edgesdk.runtime import load_bundle
    calibrate(path, xc, yc, max_accuracy_drop=0.5, threads=threads, progress=False)
    m = load_bundle(path, threads=threads)
    runs = [m.run(xt[i:i + 1]) for i in range(len(xt))]
    labels = np.array([r.labels[0] for r in runs])
    return {"accuracy": float((labels == yt).mean()),
            "ms": float(np.mean([r.total_ms for r in runs])),
            "final_exit_accuracy": float((m.run(xt, early_exit=False).labels == yt).mean())}


def accuracy(tmp, args):
    """Final-exit and calibrated early-exit accuracy of FP32, INT8 (plain and exit-aware) and
    50%-pruned + fine-tuned versions of the trained sample model."""
    import torch
    from data import PREPROCESSING
    from run import prepare
    from edgesdk.converters import convert
    from edgesdk.converters.pruning import fine_tune, prune_channels
    from edgesdk.runtime import load_bundle, preprocess
    splits, model, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    spec = load_bundle(bundle).input_spec
    xtr, ytr = preprocess(splits["train"][0], spec), splits["train"][1]
    xc, yc = preprocess(splits["calibration"][0], spec), splits["calibration"][1]
    xt, yt = preprocess(splits["test"][0], spec)[:args.samples], splits["test"][1][:args.samples]
    kw = dict(preprocessing=PREPROCESSING, threads=args.threads, progress=False)
    paths = {k: os.path.join(tmp, k + ".edgebundle") for k in ("fp32", "int8", "int8-ea", "pruned")}
    convert(model, xc[:16], paths["fp32"], **kw)
    convert(model, xc[:16], paths["int8"], quantize="int8", calibration_data=(xc, yc), **kw)
    # Exit-aware calibration needs thresholds while converting: one of 0.9 for every exit
    # (the calibrated ones let so few samples past exit 0 that the last stage would see ~16).
    convert(model, xc[:16], paths["int8-ea"], quantize="int8", calibration_data=(xc, yc),
            threshold=0.9, exit_aware=True, **kw)
    pruned = copy.deepcopy(model)
    record = prune_channels(pruned, torch.from_numpy(xc[:2]), ratio=0.5)
    fine_tune(pruned, xtr, ytr, epochs=args.fine_tune_epochs, log=lambda m: print(m, file=sys.stderr))
    convert(pruned, xc[:16], paths["pruned"], pruning=[record], **kw)
    points = {}
    for k in ("fp32", "int8", "int8-ea", "pruned"):
        points[k] = early_exit_point(paths[k], xc, yc, xt, yt, args.threads)
    return points


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--image-size", type=int, default=224, help="timing model input size")
    parser.add_argument("--timing-samples", type=int, default=20, help="inputs timed per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--fine-tune-epochs", type=int, default=3,
                        help="fine-tuning epochs after pruning the sample model")
    args = parser.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="edgesdk-compression-")
    try:
        ms, size_ratio, record = speed(tmp, args)
        points = accuracy(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fp = points["fp32"]
    print("\nedgesdk compression benchmark, {} threads".format(args.threads))
    print("ResNet-18-sized multi-exit, {}x{}, batch 1, all stages: FP32 {:.2f} ms, INT8 {:.2f} ms "
          "({:.2f}x), 50% channels pruned {:.2f} ms ({:.2f}x; MACs {:.0f}M -> {:.0f}M); INT8 "
          "graphs {:.0%} of FP32 bytes".format(
              args.image_size, args.image_size, ms["fp32"], ms["int8"], ms["fp32"] / ms["int8"],
              ms["pruned"], ms["fp32"] / ms["pruned"], record["macs_before"] / 1e6,
              record["macs_after"] / 1e6, size_ratio))
    print_cpu()
    print("sample model, {} test images: final exit / calibrated early exit (accuracy, ms per "
          "image at batch 1)".format(args.samples))
    for k, p in points.items():
        print("  {:<8} final {:.2%}   early exit {:.2%} at {:.3f} ms".format(
            k, p["final_exit_accuracy"], p["accuracy"], p["ms"]))
    print(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": "{} cores".format(os.cpu_count()),
        "cpu": cpu(), "threads": args.threads, "image_size": args.image_size,
        "samples": args.samples,
        "int8_speedup": round(ms["fp32"] / ms["int8"], 3),
        "prune50_speedup": round(ms["fp32"] / ms["pruned"], 3),
        "int8_size_ratio": round(size_ratio, 3),
        "int8_accuracy_drop_points": round(100 * (fp["final_exit_accuracy"]
                                                  - points["int8"]["final_exit_accuracy"]), 2),
        "prune50_accuracy_drop_points": round(100 * (fp["final_exit_accuracy"]
                                                     - points["pruned"]["final_exit_accuracy"]), 2),
        "early_exit": {k: {"accuracy": round(p["accuracy"], 4), "ms": round(p["ms"], 4)}
                       for k, p in points.items()},
        "exit_aware_minus_plain_points": round(100 * (points["int8-ea"]["accuracy"]
                                                      - points["int8"]["accuracy"]), 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
