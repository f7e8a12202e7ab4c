"""Input-adaptive execution on real MNIST, one run: a resolution cascade vs the full-resolution
model, deadlines under inputs crafted to defeat early exits, and gated layer skipping.

 (A) Cascade: a residual network (stem + 3 shape-keeping residual blocks of 64 channels,
     global pooling) is trained at 28x28 and, separately, at 14x14 (a quarter of the MACs),
     converted with ``convert_cascade([14, 28])`` as one graph per level (thresholds from the
     calibration split, at most 0.5 points below the full model there), and timed at batch 1
     against the 28x28 model alone (the same graph: a static deployment).
 (B) Deadlines: the sample's multi-exit ResNet with its calibrated exits, profiled here (p99
     per stage and head), run on noise and on test images perturbed with a few gradient steps
     that flatten every exit's softmax (so no exit becomes confident). The deadline is half
     the full model's measured p99; p99 with ``deadline_ms`` vs the unbounded runtime.
 (C) Layer skipping: the 28x28 network of (A), one graph per stage, with a gate per residual
     block (trained to predict that skipping the block keeps the answer right), one common
     threshold certified on the calibration split (``calibrate_gates``: within 0.5 points of
     the ungated bundle with 90% confidence, exact bound); batch-1 latency with the gates vs
     switched off (no gating when nothing is certified).
(A)'s and (C)'s timings interleave their two methods in rounds. The last line is one JSON object.
"""
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from common import SAMPLE, cpu, print_cpu, sample_parser

GOAL_CASCADE_RATIO, GOAL_CASCADE_DROP, GOAL_DEADLINE = 0.5, 0.5, 1.0


WIDTH = 64


def residual_net():
    """Stem (stride 2) + 3 residual blocks of 64 channels, a pooled head per stage."""
    import torch
    from torch import nn
    from model import conv_bn
    from edgesdk.converters import MultiExitModel

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(conv_bn(c, c), conv_bn(c, c, relu=False))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    def head():
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 10))
    return MultiExitModel([conv_bn(1, WIDTH, 2)] + [Block(WIDTH) for _ in range(3)],
                          [head() for _ in range(4)])


def train_at(net, raw, y, size, epochs, drop=0.2):
    """Every exit's loss on ``raw`` images resized to ``size`` x ``size``; each residual block
    is skipped with probability ``drop`` per batch (stochastic depth), so that skipping one
    later costs less accuracy."""
    import torch
    import torch.nn.functional as F
    from edgesdk.runtime.cascade import resize_images
    from data import to_model_input
    x = torch.from_numpy(to_model_input(resize_images(raw, (size, size))))
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(y) + 63) // 64))
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        for i in range(0, len(y), 64):
            idx = order[i:i + 64]
            state, keep, loss = x[idx], rng.random(3) >= drop, 0
            for k, (stage, head) in enumerate(zip(net.stages, net.heads)):
                if k == 0 or keep[k - 1]:
                    state = stage(state)
                loss = loss + F.cross_entropy(head(state), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def classifier(net):
    """The multi-exit network as one plain classifier: all stages, then the last head."""
    from torch import nn
    return nn.Sequential(*net.stages, net.heads[-1]).eval()


def train_gates(net, x, y, epochs=30):
    """A gate per residual block (pool + linear on its input): 1 where skipping that block
    alone keeps the final answer right."""
    import torch
    from torch import nn
    gates = []
    with torch.no_grad():
        states = [net.stages[0](torch.from_numpy(x))]
        for stage in net.stages[1:]:
            states.append(stage(states[-1]))
    for b in range(1, 4):
        with torch.no_grad():
            s = states[b - 1]
            for stage in net.stages[b + 1:]:
                s = stage(s)
            target = (net.heads[-1](s).argmax(1).numpy() == y).astype(np.float32)
        gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(WIDTH, 1))
        opt = torch.optim.Adam(gate.parameters(), lr=1e-2)
        t = torch.from_numpy(target)[:, None]
        for _ in range(epochs):
            loss = nn.functional.binary_cross_entropy_with_logits(gate(states[b - 1]), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
        gates.append(gate.eval())
    return gates


def flatten_exits(net, x, steps=10, eps=0.3, lr=0.05):
    """Inputs near ``x`` on which every exit is unsure: gradient steps that lower the sum of
    the exits' top softmax probabilities, within ``eps`` (L-inf, model-input units)."""
    import torch
    base = torch.from_numpy(x)
    delta = torch.zeros_like(base, requires_grad=True)
    for _ in range(steps):
        outs = net(base + delta)
        loss = sum(torch.softmax(o, 1).max(1).values.sum() for o in outs)
        loss.backward()
        with torch.no_grad():
            delta -= lr * delta.grad.sign()
            delta.clamp_(-eps, eps)
        delta.grad.zero_()
    return (base + delta).detach().numpy().astype(np.float32)


def per_sample_ms(fn, x, exits=None):
    """Wall milliseconds of ``fn`` on each sample at batch 1; ``exits``: a list that gets
    each result's exit index."""
    out = np.empty(len(x))
    for i in range(len(x)):
        t0 = time.perf_counter()
        result = fn(x[i:i + 1])
        out[i] = (time.perf_counter() - t0) * 1000.0
        if exits is not None:
            exits.append(int(result.exit_index[0]))
    return out


def interleaved_ms(methods, rounds):
    """Mean batch-1 ms per sample of each ``name: (fn, x)``, in interleaved rounds."""
    total = {k: [] for k in methods}
    for _ in range(rounds):
        for name, (fn, x) in methods.items():
            total[name].append(per_sample_ms(fn, x))
    return {k: float(np.mean(v)) for k, v in total.items()}


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--adversarial", type=int, default=200,
                        help="noise and perturbed inputs for the deadline test (each)")
    args = parser.parse_args(argv)
    print_cpu()
    import torch
    sys.path.insert(0, SAMPLE)
    from data import load_splits, to_model_input
    from data import PREPROCESSING
    from run import prepare
    from edgesdk.converters import convert
    from edgesdk.converters.adaptive_stages import add_gate, calibrate_gates
    from edgesdk.errors import CalibrationError
    from edgesdk.converters.cascade import convert_cascade
    from edgesdk.runtime.cascade import load_cascade
    from edgesdk.runtime.engine import load_bundle
    from edgesdk.runtime.profiler import profile_bundle
    torch.set_num_threads(args.threads)
    splits = load_splits()
    (xtr, ytr), (xc, yc), (xt, yt) = (splits[k] for k in ("train", "calibration", "test"))
    xt, yt = xt[:args.samples], yt[:args.samples]
    work = tempfile.mkdtemp(prefix="edgesdk-adaptive-")
    out = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
           "threads": args.threads, "samples": int(len(yt))}
    try:
        # (A) resolution cascade
        torch.manual_seed(0)
        t0 = time.time()
        net = train_at(residual_net(), xtr, ytr, 28, args.epochs)
        small = train_at(residual_net(), xtr, ytr, 14, args.epochs)
        out["train_seconds"] = round(time.time() - t0, 1)
        path = os.path.join(work, "cascade.edgebundle")
        # One graph per level (a plain classifier each), separate weights per resolution:
        # batch norm statistics differ between 14x14 and 28x28 inputs.
        spec = convert_cascade([classifier(small), classifier(net)], [14, 28], xc[:16], path,
                               calibration_images=xc,
                               labels=yc, max_accuracy_drop=0.5, preprocessing=PREPROCESSING,
                               progress=False, threads=args.threads)
        cascade = load_cascade(path, threads=args.threads)
        full = load_bundle(path, threads=args.threads)
        no_early = [None] * full.num_exits
        full_fn = lambda x: full.run(x, thresholds=no_early)  # noqa: E731
        x_full = to_model_input(xt)
        acc_full = float((full.run(x_full, thresholds=no_early).labels == yt).mean())
        run = cascade.run(xt)
        acc_cascade = float((run.labels == yt).mean())
        # The cascade starts from raw pixels (resizing included); the full model from its
        # preprocessed input.
        ms = interleaved_ms({"cascade": (cascade.run, xt), "full": (full_fn, x_full)},
                            args.rounds)
        out.update({"cascade_levels": [list(r) for r in cascade.resolutions],
                    "cascade_thresholds": [lv["threshold"] for lv in spec["levels"]],
                    "cascade_exit_counts": run.exit_counts().tolist(),
                    "accuracy_full": acc_full, "accuracy_cascade": acc_cascade,
                    "cascade_accuracy_drop_points": 100.0 * (acc_full - acc_cascade),
                    "full_ms": ms["full"], "cascade_ms": ms["cascade"],
                    "cascade_vs_full_latency": ms["cascade"] / ms["full"]})

        # (C) layer skipping on the same network, gates from the training split
        x_tr = to_model_input(xtr)
        gates = train_gates(net, x_tr, ytr)
        skip_path = os.path.join(work, "gated.edgebundle")
        convert(net, to_model_input(xc[:16]), skip_path, preprocessing=PREPROCESSING,
                progress=False, threads=args.threads)
        for b, gate in enumerate(gates, start=1):
            add_gate(skip_path, b, gate, to_model_input(xc[:16]), threshold=0.5)
        try:
            chosen = calibrate_gates(skip_path, to_model_input(xc), yc, max_accuracy_drop=0.5,
                                     confidence=0.9, threads=args.threads)
            thresholds, gate_risk = list(chosen["thresholds"].values()), chosen["chosen_from"]["risk"]
        except CalibrationError as e:   # nothing certified: the gates stay off
            print("gates: {}".format(e), file=sys.stderr)
            thresholds, gate_risk = None, {"refused": str(e)}
        gated = load_bundle(skip_path, threads=args.threads)
        no_early = [None] * gated.num_exits

        def with_gates(enabled):
            def fn(x):
                for s in gated.adaptive_stages():
                    s.enabled = enabled and thresholds is not None
                return gated.run(x, thresholds=no_early)
            return fn
        acc_ungated = float((with_gates(False)(x_full).labels == yt).mean())
        for s in gated.adaptive_stages():
            s.skipped = s.ran = 0
        on = with_gates(True)(x_full)
        skipped = [s.skipped / float(len(yt)) for s in gated.adaptive_stages()]
        ms = interleaved_ms({"gated": (with_gates(True), x_full),
                             "full": (with_gates(False), x_full)}, args.rounds)
        out.update({"gate_thresholds": thresholds, "gate_risk": gate_risk,
                    "blocks_skipped_fraction": skipped,
                    "accuracy_gated": float((on.labels == yt).mean()),
                    "accuracy_ungated": acc_ungated,
                    "layer_skip_vs_full_latency": ms["gated"] / ms["full"],
                    "gated_ms": ms["gated"], "ungated_ms": ms["full"]})

        # (B) deadlines on the sample's multi-exit ResNet
        _, sample_net, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
        db = os.path.join(work, "profiles.sqlite")
        profile_bundle(bundle, [1], warmup=10, repeats=100, db=db, progress=False,
                       no_sensor=True, threads=args.threads)
        model = load_bundle(bundle, threads=args.threads)
        costs = model.use_profile(db)
        clean = x_full[:args.adversarial]
        rng = np.random.default_rng(0)
        noise = rng.normal(0.0, 1.0, clean.shape).astype(np.float32)
        crafted = flatten_exits(sample_net, clean)
        hard = np.concatenate([noise, crafted])
        full_ms = per_sample_ms(lambda x: model.run(x, early_exit=False), clean)
        deadline = 0.5 * float(np.percentile(full_ms, 99))
        exits_unbounded, exits_bounded = [], []
        unbounded = per_sample_ms(model.run, hard, exits_unbounded)
        bounded = per_sample_ms(lambda x: model.run(x, deadline_ms=deadline), hard, exits_bounded)
        count = lambda e: np.bincount(e, minlength=model.num_exits).tolist()  # noqa: E731
        exits_unbounded, exits_bounded = count(exits_unbounded), count(exits_bounded)
        clean_exits = model.run(clean).exit_counts().tolist()
        out.update({"deadline_ms": deadline, "stage_p99_ms": costs.stage_ms,
                    "head_p99_ms": costs.head_ms,
                    "clean_exit_counts": clean_exits, "hard_exit_counts_unbounded": exits_unbounded,
                    "hard_exit_counts_deadline": exits_bounded,
                    "p99_unbounded_ms": float(np.percentile(unbounded, 99)),
                    "p99_deadline_ms": float(np.percentile(bounded, 99)),
                    "deadline_p99_ratio": float(np.percentile(bounded, 99)) / deadline,
                    "unbounded_p99_ratio": float(np.percentile(unbounded, 99)) / deadline})
        out["goals_met"] = bool(out["cascade_vs_full_latency"] <= GOAL_CASCADE_RATIO and
                                out["cascade_accuracy_drop_points"] <= GOAL_CASCADE_DROP and
                                out["deadline_p99_ratio"] <= GOAL_DEADLINE)
        out.update(cpu())
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
