"""Early-exit deployment end to end on real MNIST digits, with edgesdk's public API only.

train (or reuse) -> convert to a bundle -> calibrate thresholds on held-out data -> run with
the device runtime at batch 1 -> per-exit accuracy, exit histogram, latency -> a plot of
accuracy vs mean latency across thresholds -> profile every stage, head and the engine's own
work into a profile database and compare the cost model's prediction with the measured run.
Outputs go to samples/mnist_early_exit/out/.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from data import PREPROCESSING, load_splits, to_model_input  # noqa: E402

from edgesdk.converters import calibrate, convert, cost_table, simulator_for  # noqa: E402
from edgesdk.profiles import ProfileRecorder  # noqa: E402
from edgesdk.runtime import load_bundle, preprocess, profile_graphs  # noqa: E402
from edgesdk.runtime.profiler import InterleavedRuns, exit_mix  # noqa: E402

# One max-softmax threshold for every exit, swept for the trade-off plot.
SWEEP = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def prepare(out_dir, epochs=6, max_accuracy_drop=0.5, threads=None):
    """Train (or reuse weights trained with the same settings), convert, calibrate.

    Returns ``(splits, torch model, bundle path, CalibrationResult)``.
    """
    import torch
    from model import MultiExitResNet
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(threads or os.cpu_count())
    splits = load_splits()
    torch.manual_seed(0)  # the initial weights too, so a rerun trains the same model
    model = MultiExitResNet()
    weights = os.path.join(out_dir, "model.pt")
    meta_path = os.path.join(out_dir, "model.json")
    meta = {"epochs": epochs, "train_samples": len(splits["train"][1]), "seed": 0}
    if os.path.exists(weights) and os.path.exists(meta_path) and json.load(open(meta_path)) == meta:
        log("reusing trained weights in {}".format(weights))
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
    else:
        from train import train
        log("training on {} MNIST images for {} epochs".format(meta["train_samples"], epochs))
        train(model, to_model_input(splits["train"][0]), splits["train"][1], epochs=epochs, log=log)
        torch.save(model.state_dict(), weights)
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    bundle = os.path.join(out_dir, "mnist_resnet.edgebundle")
    cal_x, cal_y = splits["calibration"]
    report = convert(model, to_model_input(cal_x[:16]), bundle, preprocessing=PREPROCESSING,
                     class_names=[str(d) for d in range(10)], force=True, threads=threads)
    log("converted: {} stages; ONNX Runtime vs PyTorch max abs error per exit {}".format(
        len(report.stage_macs), ["{:.1e}".format(e) for e in report.max_abs_error]))
    spec = load_bundle(bundle, threads=threads).input_spec
    result = calibrate(bundle, preprocess(cal_x, spec), cal_y,
                       max_accuracy_drop=max_accuracy_drop, threads=threads)
    return splits, model, bundle, result


def run_batch1(model, x, thresholds=None, early_exit=True):
    """Run sample by sample; returns (labels, exit indices, mean ms per sample)."""
    labels, exits, ms = [], [], []
    for i in range(len(x)):
        r = model.run(x[i:i + 1], thresholds, early_exit)
        labels.append(r.labels[0])
        exits.append(r.exit_index[0])
        ms.append(r.total_ms)
    return np.array(labels), np.array(exits), float(np.mean(ms))


def plot(points, calibrated, full, path):
    """Accuracy vs mean latency across thresholds; calibrated and no-exit points marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    swept = sorted(points)
    ax.plot([p[1] for p in swept], [100 * p[2] for p in swept], "o-", color="tab:blue",
            label="one max-softmax threshold for every exit")
    for thr, ms, acc in swept:
        ax.annotate("{:g}".format(thr), (ms, 100 * acc),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.plot([calibrated[0]], [100 * calibrated[1]], "*", ms=14, color="tab:red",
            label="calibrated per-exit thresholds")
    ax.plot([full[0]], [100 * full[1]], "s", ms=8, color="black", label="early exits off")
    ax.set_xlabel("mean latency per image, batch 1 (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("MNIST multi-exit ResNet, edgesdk runtime (ONNX Runtime, CPU)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-accuracy-drop", type=float, default=0.5,
                        help="calibration objective, percentage points (on the calibration split)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    t0 = time.time()
    splits, _, bundle, cal = prepare(args.out, args.epochs, args.max_accuracy_drop, args.threads)
    model = load_bundle(bundle, threads=args.threads)
    x_test = preprocess(splits["test"][0], model.input_spec)
    y_test = splits["test"][1]

    per_exit = [float((p.argmax(1) == y_test).mean()) for p in model.exit_probabilities(x_test)]
    for _ in range(50):  # warm-up: first calls pay for memory-arena growth
        model.run(x_test[:1])
    lab_full, _, ms_full = run_batch1(model, x_test, early_exit=False)
    lab_ee, exits, ms_ee = run_batch1(model, x_test)
    acc_full, acc_ee = float((lab_full == y_test).mean()), float((lab_ee == y_test).mean())
    points = []
    for thr in SWEEP:
        lab, _, ms = run_batch1(model, x_test, [thr] * (model.num_exits - 1) + [None])
        points.append((thr, ms, float((lab == y_test).mean())))
    png = os.path.join(args.out, "accuracy_vs_latency.png")
    plot(points, (ms_ee, acc_ee), (ms_full, acc_full), png)

    # Profile every stage, head and the engine's own work on this machine (the profiler's
    # defaults), with the calibrated run on the test split timed between the profiler's rounds
    # (same machine load; wall time around run()). The cost model then predicts that run's
    # mean latency from the measured table and the test split's exits.
    db = os.path.join(args.out, "profiles.sqlite")
    if os.path.exists(db):
        os.remove(db)  # this run's profile only
    recorder = ProfileRecorder(db, model.bundle.manifest)
    live = InterleavedRuns(model, x_test)
    profile_graphs(model, [1], progress=recorder, between=live, mix=exit_mix(model, x_test))
    recorder.close()
    measured = live.finish()
    table = cost_table(db, model.bundle.manifest)
    sim = simulator_for(model, model.exit_probabilities(x_test), y_test, costs=table)
    predicted = sim.evaluate(model.thresholds).mean_cost

    counts = np.bincount(exits, minlength=model.num_exits)
    print("\nTest set: {} real MNIST images, batch 1, {} stages".format(len(y_test), model.num_exits))
    print("calibrated thresholds ({}): {}".format(cal.policy, ", ".join(
        "off" if t is None else "{:.4g}".format(t) for t in cal.point.thresholds[:-1])))
    print("\n{:<8}{:>16}{:>14}".format("exit", "accuracy alone", "samples left"))
    for k in range(model.num_exits):
        print("{:<8}{:>15.2%}{:>9d} ({:.0%})".format(k, per_exit[k], counts[k], counts[k] / len(y_test)))
    print("\n{:<22}{:>10}{:>12}".format("", "accuracy", "mean ms"))
    print("{:<22}{:>10.2%}{:>12.3f}".format("early exits off", acc_full, ms_full))
    print("{:<22}{:>10.2%}{:>12.3f}".format("calibrated exits", acc_ee, ms_ee))
    print("\nlatency ratio {:.2f}, accuracy change {:+.2f} points; plot: {}".format(
        ms_ee / ms_full, 100 * (acc_ee - acc_full), png))
    print("measured per-sample ms: stages {}, heads {} (profile: {})".format(
        [round(v, 3) for v in table.stage], [round(v, 3) for v in table.head], db))
    print("engine's own work (ms): {:.4f} per call, {:.4f} per stage step, {:.4f} per early "
          "head, {:.4f} for the final head".format(table.engine["call"], table.engine["stage"],
                                                  table.engine["head"], table.engine["final"]))
    if table.noisy:
        print("noisy profile rows (p90/p50 > 1.5, a loaded machine): {}".format(
            ", ".join(table.noisy)))
    print("cost model: predicted {:.3f} ms for the calibrated run ({} per graph + the engine's "
          "own work), measured {:.3f} ms (wall time around run(), timed between the profiler's "
          "rounds) ({:+.1%}; goal within 5%)".format(predicted, table.metric, measured,
                                                    (predicted - measured) / measured))
    print("bundle: {}  ({:.0f}s in all)".format(bundle, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
