"""Gated residual blocks inside stages on real MNIST: gated vs ungated latency, what the
profile predicts, and whether ``convert --profile`` keeps the gates, at two sizes, one run.

Model (per input size S and width C): stage 0 = a stride-2 stem (C channels, S/2) and two
gated residual blocks; stage 1 = a gated *downsampling* block (stride 2 to 2C channels at
S/4, projection shortcut) and a gated block; a pooled linear head per stage (two exits, none
per block). Sizes: the digits upsampled to 56x56 with C = 32, and at 28x28 with C = 8.
Trained briefly (``--epochs``, the 3000 training digits) with every branch dropped for 20%
of the samples (stochastic depth through the gates), then each gate (pool + linear on the
block's input) is trained to predict that skipping its block alone keeps the answer right.
Converted and profiled once (``profile_graphs``: each gated stage's own graph beside its
pieces and the block loop's own cost). Settings: the gates' common threshold certified on the
calibration split by ``calibrate_gates`` (within 0.5 points of the ungated bundle, 90%
confidence), and thresholds under which 25%, 50% and 75% of the calibration digits skip each
block (set block by block, in order, by bisection in the bundle's own runs).

Reported per setting: the share of test digits each block keeps, accuracy gated vs ungated,
batch-1 latency gated / ungated with exits off (interleaved rounds), the ratio the profile
predicts from its rows and the measured keep shares, the MAC-predicted ratio, the blocks
whose gates ``convert --profile`` keeps when the model is converted again at that setting,
and that bundle's latency / ungated, timed in the same rounds.
The last line is one JSON object.
"""
import datetime
import json
import os
import platform
import sys
import tempfile

import numpy as np

from common import SAMPLE, cpu, print_cpu, sample_parser

# (input size, width C): blocks large enough for skipping to pay, and small ones where the
# extra graph calls cost more than the skipped branches.
CONFIGS = ((56, 32), (28, 8))
SKIP_SHARE = 0.2    # stochastic depth in training
SKIP_SHARES = (0.25, 0.5, 0.75)   # skip shares swept (thresholds set on the calibration split)


def gate_module(c):
    """A gate: pooled features -> a skip logit; ``mode`` "random" skips each sample with
    probability SKIP_SHARE (training), "skip"/"run" force it (labelling), "learned" scores."""
    import torch
    from torch import nn

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.score = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))
            self.mode = "learned"

        def forward(self, x):
            if self.mode == "learned":
                return self.score(x)
            n = x.shape[0]
            if self.mode == "random":
                return (torch.rand(n, 1) < SKIP_SHARE).float() * 100.0 - 50.0
            return torch.full((n, 1), 50.0 if self.mode == "skip" else -50.0)
    return Gate()


def gated_net(c):
    from torch import nn
    from edgesdk.converters import MultiExitModel
    from edgesdk.converters.gated import GatedBlock

    def conv_bn(c_in, c_out, stride=1, relu=True):
        layers = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
        return layers + ([nn.ReLU()] if relu else [])

    def block(c_in, c_out, stride=1):
        branch = nn.Sequential(*conv_bn(c_in, c_out, stride) + conv_bn(c_out, c_out, relu=False))
        shortcut = None if stride == 1 else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        return GatedBlock(branch, gate_module(c_in), shortcut=shortcut, post=nn.ReLU())

    def head(ch):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 10))
    stages = [nn.Sequential(*conv_bn(1, c, 2), block(c, c), block(c, c)),
              nn.Sequential(block(c, 2 * c, 2), block(2 * c, 2 * c))]
    return MultiExitModel(stages, [head(c), head(2 * c)])


def set_gates(net, mode):
    from edgesdk.converters.gated import gated_blocks
    for b in gated_blocks(net):
        b.gate.mode = mode


def train(net, x, y, epochs):
    import torch
    import torch.nn.functional as F
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(y) + 63) // 64))
    rng = np.random.default_rng(0)
    set_gates(net, "random")
    net.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        for i in range(0, len(y), 64):
            idx = order[i:i + 64]
            loss = sum(F.cross_entropy(o, yt[idx]) for o in net(xt[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return train_gates(net, xt, y)


def train_gates(net, xt, y, epochs=60):
    """Each gate learns, on its block's input, whether skipping that block alone keeps the
    final answer right."""
    import torch
    from torch import nn
    from edgesdk.converters.gated import gated_blocks
    blocks = gated_blocks(net)
    inputs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, b=b: inputs.__setitem__(b, i[0]))
             for b in blocks]
    with torch.no_grad():
        set_gates(net, "run")
        net(xt)
        for h in hooks:
            h.remove()
        targets = []
        for b in blocks:
            b.gate.mode = "skip"
            targets.append((net(xt)[-1].argmax(1).numpy() == y).astype(np.float32))
            b.gate.mode = "run"
    set_gates(net, "learned")
    for b, t in zip(blocks, targets):
        opt = torch.optim.Adam(b.gate.parameters(), lr=1e-2)
        t = torch.from_numpy(t)[:, None]
        for _ in range(epochs):
            loss = nn.functional.binary_cross_entropy_with_logits(b.gate(inputs[b]), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def ms_per_sample(model, x):
    """Mean wall ms per sample at batch 1, exits off."""
    from spatial import mean_ms
    return mean_ms(model, x, 1)


def thresholds_for_share(model, x, share, steps=12):
    """Block thresholds under which about ``share`` of ``x`` skips each block, the blocks set
    in order (a block's inputs depend on what the blocks before it skipped): bisection on
    each threshold, measured in the bundle's own gated runs (exits off)."""
    blocks = [b for s in model.adaptive_stages() for b in s.blocks]
    for b in blocks:
        b.threshold = 1.0
    for b in blocks:
        lo, hi = 0.0, 1.0     # skipping grows as the threshold falls
        for _ in range(steps):
            b.threshold = (lo + hi) / 2
            for s in model.adaptive_stages():
                s.reset_counts()
            model.exit_logits(x, batch_size=32)
            if b.skipped / float(b.skipped + b.ran) > share:
                lo = b.threshold
            else:
                hi = b.threshold
        b.threshold = (lo + hi) / 2
    return [b.threshold for b in blocks]


class Setting(object):
    """Measures the converted bundle at one set of block thresholds (gates vs its own graphs,
    interleaved rounds, batch 1, exits off)."""

    def __init__(self, model, xt, xte, yte, rounds):
        self.model, self.xt, self.xte, self.yte, self.rounds = model, xt, xte, yte, rounds
        self.stages = model.adaptive_stages()
        self.blocks = [b for s in self.stages for b in s.blocks]

    def switch(self, on):
        for s in self.stages:
            s.enabled = on
            s.reset_counts()

    def measure(self, thresholds, costs, manifest, chosen):
        """The setting's figures; ``chosen``: the bundle ``convert --profile`` made at these
        thresholds, timed in the same interleaved rounds."""
        for b, t in zip(self.blocks, thresholds):
            b.threshold = t
        self.switch(True)
        labels = self.model.exit_logits(self.xte, batch_size=32)[-1].argmax(1)
        keep = {s.id: [b.ran / float(b.ran + b.skipped) for b in s.blocks] for s in self.stages}
        self.switch(False)
        dense = self.model.exit_logits(self.xte, batch_size=32)[-1].argmax(1)
        times = {"gated": [], "ungated": [], "chosen": []}
        for _ in range(self.rounds):
            for kind in times:
                self.switch(kind == "gated")
                times[kind].append(ms_per_sample(chosen if kind == "chosen" else self.model,
                                                 self.xt))
        self.switch(True)
        ratio = {k: round(float(np.median(times[k]) / np.median(times["ungated"])), 3)
                 for k in ("gated", "chosen")}
        return dict(self.predict(keep, costs, manifest),
                    keep={k: [round(v, 3) for v in vs] for k, vs in keep.items()},
                    accuracy_gated=float((labels == self.yte).mean()),
                    accuracy_ungated=float((dense == self.yte).mean()),
                    gated_vs_ungated=ratio["gated"], chosen_vs_ungated=ratio["chosen"])

    @staticmethod
    def predict(keep, costs, manifest):
        """Gated / ungated as the profile and as MACs predict it (stages and the final head)."""
        from edgesdk.converters.selection import gate_savings
        head = costs[(manifest["exits"][-1]["id"], "onnx", "fp32")]
        per_stage = [gate_savings(costs, e, keep[e["id"]]) for e in manifest["stages"]]
        total = float(sum(e["macs"] for e in manifest["stages"]) + manifest["exits"][-1]["macs"])
        skipped = sum((1 - k) * b["macs"] for e in manifest["stages"]
                      for k, b in zip(keep[e["id"]], e["gated"]["blocks"]))
        ungated = sum(u for u, _ in per_stage) + head
        return {"profile_predicted": round((ungated - sum(sum(v) for _, v in per_stage)) /
                                           ungated, 3),
                "mac_predicted": round(1 - skipped / total, 3)}


def one_config(size, c, splits, args, work):
    import torch
    from edgesdk.converters import convert
    from edgesdk.converters.adaptive_stages import calibrate_gates
    from edgesdk.converters.cost_model import build_costs
    from edgesdk.converters.gated import gated_blocks
    from edgesdk.errors import CalibrationError
    from edgesdk.profiles import ProfileRecorder
    from edgesdk.runtime import load_bundle
    from edgesdk.runtime.profiler import profile_graphs
    from data import to_model_input
    from spatial import upsampled
    (xtr, ytr), (xc, yc), (xte, yte) = [(upsampled(x) if size == 56 else to_model_input(x), y)
                                        for x, y in splits]
    torch.manual_seed(0)
    net = train(gated_net(c), xtr, ytr, args.epochs)
    path = os.path.join(work, "gated{}.edgebundle".format(size))
    convert(net, xc[:8], path, progress=False, threads=args.threads)
    try:
        chosen = calibrate_gates(path, xc, yc, max_accuracy_drop=0.5, confidence=0.9,
                                 threads=args.threads)
        calibrated = next(iter(chosen["thresholds"].values()))
    except CalibrationError as e:   # nothing certified: the gates never skip
        print("{}x{}: {}".format(size, size, e), file=sys.stderr)
        calibrated = 1.0
    model = load_bundle(path, threads=args.threads)
    # The profile: the graphs in real runs, each gated stage's own graph beside its pieces.
    db = os.path.join(work, "profile{}.sqlite".format(size))
    record = ProfileRecorder(db, model.bundle.manifest)
    rows = profile_graphs(model, [1], progress=record)
    record.close()
    costs, _ = build_costs([dict(r, metric="mean_ms", value=r["mean_ms"]) for r in rows],
                           "mean_ms")
    setting = Setting(model, xte[:args.samples], xte, yte, args.rounds)
    settings = [("calibrated", [calibrated] * len(setting.blocks))]
    for share in SKIP_SHARES:   # thresholds skipping about this share in every block
        settings.append(("skip {:.0%}".format(share), thresholds_for_share(model, xc, share)))
    out = []
    for name, thresholds in settings:
        # Converted again at these thresholds with the profile: the gates that pay stay.
        for b, t in zip(gated_blocks(net), thresholds):
            b.threshold = t
        chosen_path = os.path.join(work, "chosen{}.edgebundle".format(size))
        report = convert(net, xc[:8], chosen_path, progress=False, threads=args.threads,
                         calibration_data=(xc, yc), profile=db, force=True)
        chosen = load_bundle(chosen_path, threads=args.threads)
        row = dict(setting.measure(thresholds, costs, model.bundle.manifest, chosen),
                   setting=name, thresholds=[round(t, 4) for t in thresholds])
        row["profile_kept_gates"] = sorted(
            "{}/{}".format(sid, j) for sid, g in report.choices["gates"].items()
            for j in range(len(g["keep"])) if j not in g["dropped"])
        out.append(row)
        print("{}x{} width {}, {} (thresholds {}): keep shares {}; accuracy gated {:.2%} vs "
              "ungated {:.2%}; batch-1 gated/ungated {:.3f} (the profile predicts {:.3f}, MACs "
              "{:.3f}); convert --profile keeps the gates of {}: {:.3f} of ungated".format(
                  size, size, c, name, row["thresholds"], row["keep"], row["accuracy_gated"],
                  row["accuracy_ungated"], row["gated_vs_ungated"], row["profile_predicted"],
                  row["mac_predicted"], ", ".join(row["profile_kept_gates"]) or "no block",
                  row["chosen_vs_ungated"]))
    return {"size": size, "width": c, "settings": out}


def main(argv=None):
    parser = sample_parser(__doc__)
    # Many short interleaved rounds: on a shared machine one round's ratio ranges over
    # 0.8-1.8 of the median (measured), so the median needs rounds, not samples.
    parser.set_defaults(epochs=4, samples=100)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    print_cpu()
    import torch
    sys.path.insert(0, SAMPLE)
    from data import load_splits
    torch.set_num_threads(args.threads)
    s = load_splits()
    splits = [s[k] for k in ("train", "calibration", "test")]
    work = tempfile.mkdtemp(prefix="edgesdk-gating-")
    configs = [one_config(size, c, splits, args, work) for size, c in CONFIGS]
    print(json.dumps({"date": datetime.date.today().isoformat(), "machine": "{} cores {}".format(
        os.cpu_count(), platform.machine()), **cpu(), "threads": args.threads,
        "epochs": args.epochs, "samples": args.samples, "rounds": args.rounds,
        "configs": configs}))


if __name__ == "__main__":
    main()
