"""A W4A8 multi-exit CNN on the Ultra96-V2 through hls4ml: bit-accurate C simulation vs the
quantized PyTorch model and vs the float model, with edgesdk's estimates, in one run.

On the sample's real MNIST splits (3000 train, 1000 calibration, 1000 test):
 1. train a float multi-exit CNN (3 stages of stride-2 convolutions, a max-pool + linear head
    per exit) to convergence, and the same network with Brevitas W4A8 layers (power-of-two
    scales, 4-bit weights, 8-bit activations; ``--weight-bits 8``: W8A8), initialised from
    the float weights and fine-tuned with the same schedule, distilled from the float exits;
 2. convert the quantized model (QONNX kept) and build it for the Ultra96-V2 with hls4ml: types
    from the quantizers and the calibration data, C simulation compiled with g++;
 3. run the test images through the C simulation in the edgesdk runtime and compare, per
    exit: top-1 agreement with the quantized PyTorch model, accuracy against the float one;
 4. estimate frames per second from edgesdk's per-stage latency estimates at the board clock
    and the exit distribution under early exit (thresholds calibrated on the calibration set).
The last line is one JSON object.
"""
import datetime
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from common import cpu, print_cpu, sample_parser

GOAL_AGREEMENT = 0.99
GOAL_DROP_POINTS = 1.0


def networks(weight_bits=4):
    """(float network, quantized network) of the same shape: the quantized one has
    ``weight_bits``-bit weights with power-of-two scales, per output channel in the
    convolutions and per tensor in the linear heads (hls4ml 1.3 cannot convert per-channel
    scales on a linear layer), and 8-bit activations."""
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint
    from brevitas.quant import Uint8ActPerTensorFixedPoint
    from brevitas.quant.fixed_point import Int8WeightPerChannelFixedPoint
    from torch import nn
    from edgesdk.converters import MultiExitModel
    widths = [(1, 16), (16, 32), (32, 32)]
    sizes = [7, 3, 2]  # feature maps 14, 7, 4, max-pooled by 2

    def build(quant):
        def conv(c_in, c_out):
            if quant:
                return [qnn.QuantConv2d(c_in, c_out, 3, padding=1, stride=2, bias=False,
                                        weight_bit_width=weight_bits,
                                        weight_quant=Int8WeightPerChannelFixedPoint),
                        qnn.QuantReLU(bit_width=8, act_quant=Uint8ActPerTensorFixedPoint)]
            return [nn.Conv2d(c_in, c_out, 3, padding=1, stride=2, bias=False), nn.ReLU()]

        def linear(n):
            if quant:
                return qnn.QuantLinear(n, 10, bias=True, weight_bit_width=weight_bits,
                                       weight_quant=Int8WeightPerTensorFixedPoint)
            return nn.Linear(n, 10)
        stages = [nn.Sequential(*conv(*w)) for w in widths]
        if quant:
            stages[0] = nn.Sequential(qnn.QuantIdentity(bit_width=8,
                                                        act_quant=Int8ActPerTensorFixedPoint),
                                      *stages[0])
        heads = [nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), linear(c * s * s))
                 for (_, c), s in zip(widths, sizes)]
        return MultiExitModel(stages, heads)
    return build(False), build(True)


def train(model, x, y, epochs, lr=3e-3, cosine=False, teacher=None, temperature=4.0,
          distill=0.7):
    """Adam on the sum of the exits' losses, batch 64. ``cosine``: the learning rate decays
    to 0 over the run. ``teacher``: each exit also learns the teacher's exit (knowledge
    distillation, weight ``distill``, the usual remedy for what low-bit QAT loses)."""
    import torch
    from torch.nn import functional as F
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            outs = model(xt[idx])
            loss = sum(F.cross_entropy(o, yt[idx]) for o in outs)
            if teacher is not None:
                with torch.no_grad():
                    soft = [F.softmax(t / temperature, 1) for t in teacher(xt[idx])]
                kd = sum(F.kl_div(F.log_softmax(o / temperature, 1), t, reduction="batchmean")
                         for o, t in zip(outs, soft)) * temperature ** 2
                loss = (1 - distill) * loss + distill * kd
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    return model.eval()


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--target", default="ultra96-v2")
    parser.add_argument("--reuse-factor", type=int, default=16)
    parser.add_argument("--weight-bits", type=int, choices=(4, 8), default=4,
                        help="4: W4A8 (the goal), 8: W8A8")
    # 48, not 24: at 24 the W4A8 network's first exit was still 1.7-2.4 points below the
    # float one over three seeds, at 48 0.5-0.7 (PyTorch, the float model trained as long;
    # 10- and 12-bit activations in stage 0 instead changed nothing: 2.2-2.3).
    parser.add_argument("--qat-epochs", type=int, default=48,
                        help="fine-tuning epochs, for the float model as for the quantized one")
    args = parser.parse_args(argv)
    print_cpu()
    import torch
    from data import load_splits
    from data import to_model_input
    from edgesdk.converters import convert
    from edgesdk.converters.calibrate import calibrate
    from edgesdk.converters.hls4ml.build import build_fpga
    from edgesdk.runtime.engine import load_bundle
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    splits = load_splits()
    (xtr, ytr), (xc, yc), (xt, yt) = (splits[k] for k in ("train", "calibration", "test"))
    xtr, xc, xt = (to_model_input(a) for a in (xtr, xc, xt))
    xt, yt = xt[:args.samples], yt[:args.samples]
    t0 = time.time()
    fp, q = networks(args.weight_bits)
    # The float model is trained to convergence (the same fine-tuning schedule as the QAT),
    # so the accuracy drop is the quantization's, not extra training's.
    train(fp, xtr, ytr, args.epochs)
    train(fp, xtr, ytr, args.qat_epochs, lr=1e-3, cosine=True)
    q.load_state_dict(fp.state_dict(), strict=False)  # QAT starts from the float weights
    train(q, xtr, ytr, args.qat_epochs, lr=1e-3, cosine=True, teacher=fp)
    train_s = time.time() - t0
    work = tempfile.mkdtemp(prefix="edgesdk-fpga-")
    try:
        path = os.path.join(work, "w{}a8.edgebundle".format(args.weight_bits))
        convert(q, xc[:16], path, progress=False)
        calibrate(path, xc, yc, max_accuracy_drop=0.5, progress=False)
        t0 = time.time()
        records = build_fpga(path, args.target, calibration_data=xc[:256],
                             reuse_factor=args.reuse_factor, progress=False)
        build_s = time.time() - t0
        csim = load_bundle(path, builds="fpga-csim")
        with torch.no_grad():
            torch_q = [o.numpy() for o in q(torch.from_numpy(xt))]
            torch_f = [o.numpy() for o in fp(torch.from_numpy(xt))]
        t0 = time.time()
        sim = csim.exit_logits(xt)
        csim_s = time.time() - t0
        agreement = [float((a.argmax(1) == b.argmax(1)).mean()) for a, b in zip(sim, torch_q)]
        acc_sim = [float((a.argmax(1) == yt).mean()) for a in sim]
        acc_float = [float((a.argmax(1) == yt).mean()) for a in torch_f]
        drop = [100.0 * (f - s) for f, s in zip(acc_float, acc_sim)]
        run = csim.run(xt)
        stage_ms = [r["estimate"]["latency_ms"] for r in records]  # stage0, exit0, stage1, ...
        per_exit = np.cumsum([stage_ms[2 * k] + stage_ms[2 * k + 1] for k in range(len(sim))])
        counts = run.exit_counts()
        mean_ms = float((per_exit * counts).sum() / counts.sum())
        board = load_bundle(path).bundle.manifest["fpga"][args.target]
        out = {
            "date": datetime.date.today().isoformat(), "target": args.target,
            "quantization": "W{}A8".format(args.weight_bits), "qat_epochs": args.qat_epochs,
            "samples": int(len(xt)), "reuse_factor": args.reuse_factor,
            "train_seconds": round(train_s, 1), "build_seconds": round(build_s, 1),
            "csim_seconds": round(csim_s, 1),
            "csim_argmax_agreement_per_exit": agreement,
            "csim_argmax_agreement": min(agreement),
            "accuracy_float_per_exit": acc_float, "accuracy_csim_per_exit": acc_sim,
            "csim_accuracy_drop_points_per_exit": drop,
            "csim_accuracy_drop_points": max(drop),
            "early_exit_accuracy": float((run.labels == yt).mean()),
            "exit_counts": counts.tolist(),
            "estimated_ms_per_frame": mean_ms, "estimated_fps": 1000.0 / mean_ms,
            "estimate": board["estimate"], "budget": board["budget"],
            "fits_board": bool(board["fits"]),
            "goals_met": bool(min(agreement) >= GOAL_AGREEMENT and max(drop) <= GOAL_DROP_POINTS),
        }
        out.update(cpu())
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
