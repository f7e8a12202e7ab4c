"""Convert a PyTorch multi-exit model into a verified bundle.

The model is given as FILE.py:NAME or package.module:NAME, where NAME is an nn.Module class
or a factory called without arguments; --weights loads a state_dict (torch.load with
weights_only=True, never arbitrary pickles).
"""
import importlib
import importlib.util
import json
import os
import sys

import numpy as np

from edgesdk.converters.cost_model import METRICS
from edgesdk.converters.selection import DEFAULT_EXIT_ACCURACY_DROP, DEFAULT_MIN_AGREEMENT
from edgesdk.errors import InputError
from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("--model", required=True, help="FILE.py:NAME or package.module:NAME")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="state_dict saved with torch.save (.pt)")
    weights.add_argument("--random-weights", action="store_true",
                         help="convert the model as constructed (untrained: for timing only)")
    p.add_argument("--stages-attr", default="stages", help="nn.ModuleList of stages (default: stages)")
    p.add_argument("--heads-attr", default="heads", help="nn.ModuleList of exit heads (default: heads)")
    p.add_argument("--input-shape", help="one sample's shape, e.g. 1,28,28 (or give --example-data)")
    p.add_argument("--example-data", help=".npz whose 'x' gives example and reference inputs")
    p.add_argument("-o", "--output", required=True, help="bundle path, NAME.edgebundle")
    p.add_argument("--target", default="host", help="target board (see `edgesdk targets`) or a board file (.toml/.json); default: host")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13, TensorRT 8.2's)")
    p.add_argument("--policy", default="max-softmax", help="exit policy: max-softmax, entropy, margin")
    p.add_argument("--threshold", type=float, help="threshold for every early exit "
                                                    "(default: off until `edgesdk calibrate`)")
    p.add_argument("--scale", type=_fraction,
                   help="preprocessing: multiply raw pixels by this, e.g. 1/255 or 0.0625 "
                        "(default 1/255 only for 8-bit example pixels)")
    p.add_argument("--mean", help="preprocessing: per-channel means, comma separated")
    p.add_argument("--std", help="preprocessing: per-channel stds, comma separated")
    p.add_argument("--atol", type=float, default=1e-4, help="verification tolerance (absolute)")
    p.add_argument("--rtol", type=float, default=1e-3, help="verification tolerance (relative)")
    p.add_argument("--quantize", choices=["fp32", "fp16", "int8"],
                   help="the precision every graph runs (default: the target's; FP32 graphs are "
                        "always kept)")
    p.add_argument("--precisions", default="",
                   help="more builds per graph for --profile to choose from, e.g. int8,fp16")
    p.add_argument("--calibration-data", metavar="NPZ",
                   help="real inputs 'x' (and labels 'y') for INT8 ranges, agreement checks and "
                        "--profile choices (default: --example-data)")
    p.add_argument("--calibration-method", default="minmax",
                   choices=["minmax", "entropy", "percentile"],
                   help="how INT8 activation ranges are set (default minmax)")
    p.add_argument("--exit-aware", action="store_true",
                   help="calibrate INT8 stage k only on samples reaching it under --threshold")
    p.add_argument("--profile", metavar="DB",
                   help="choose each graph's build and drop exits that do not pay, from this "
                        "profile database of the same bundle measured on the board")
    p.add_argument("--device", help="device fingerprint in --profile (when it holds several)")
    p.add_argument("--profile-metric", default="latency", choices=sorted(METRICS),
                   help="what --profile minimises (default latency: the mean)")
    p.add_argument("--profile-batch", type=int, default=1, help="batch size costs are taken at")
    p.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                   help="a reduced-precision build must keep this top-1 agreement with fp32 at "
                        "every exit (default %(default)s)")
    p.add_argument("--exit-accuracy-drop", type=float, default=DEFAULT_EXIT_ACCURACY_DROP,
                   help="accuracy points an exit may cost when judging whether it pays for "
                        "itself (needs labels; default %(default)s)")
    p.add_argument("--prune", type=float, metavar="RATIO",
                   help="remove this fraction of channels in every stage (Torch-Pruning)")
    p.add_argument("--prune-stages", metavar="R0,R1,...", help="one pruning ratio per stage instead")
    p.add_argument("--prune-importance", default="l1", choices=["l1", "l2", "taylor"],
                   help="channel importance (taylor needs labels in the calibration data)")
    p.add_argument("--fine-tune-epochs", type=int, default=0,
                   help="after pruning, fine-tune this many epochs on the labelled calibration data")
    p.add_argument("--fine-tune-lr", type=float, default=3e-4,
                   help="fine-tuning learning rate (default 3e-4: 1e-3 lost 1 point on the sample)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def load_model(spec, weights=None):
    """Instantiate ``FILE.py:NAME`` / ``module:NAME`` and load a state_dict into it."""
    from edgesdk.deps import require
    torch = require("torch", "torch", "convert PyTorch models")
    source, sep, attr = spec.rpartition(":")
    if not sep or not source or not attr:
        raise InputError("--model must be FILE.py:NAME or package.module:NAME, got '{}'".format(spec))
    try:
        if source.endswith(".py"):
            if not os.path.isfile(source):
                raise InputError("model file '{}' does not exist".format(source))
            loader = importlib.util.spec_from_file_location("edgesdk_user_model", source)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except InputError:
        raise
    except Exception as exc:
        raise InputError("cannot import '{}': {}: {}".format(source, type(exc).__name__, exc))
    if not hasattr(module, attr):
        raise InputError("'{}' has no attribute '{}'".format(source, attr))
    model = getattr(module, attr)()
    if not isinstance(model, torch.nn.Module):
        raise InputError("{} returned a {}, expected an nn.Module".format(spec, type(model).__name__))
    if weights:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError("cannot load weights '{}' (a state_dict saved with torch.save is "
                             "expected): {}".format(weights, exc))
        mismatch = weights_mismatch(model.state_dict(), state) if isinstance(state, dict) else None
        if mismatch:
            raise InputError("weights '{}' do not fit {}: {}".format(weights, spec, mismatch))
        try:
            model.load_state_dict(state)
        except Exception as exc:
            raise InputError("weights '{}' do not fit {}: {}".format(
                weights, spec, str(exc).splitlines()[0][:500]))
    return model


def _shown(keys, most=3):
    keys = sorted(keys)
    return ", ".join(keys[:most]) + (" ..." if len(keys) > most else "")


def weights_mismatch(expected, given):
    """A short account of how the state dict ``given`` differs from the model's
    ``expected`` one (None if the keys and shapes agree): counts, the first few keys, and a
    hint when one prefix (``module.`` from DataParallel, a wrapper's attribute) explains it."""
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    shapes = sorted(k for k in set(expected) & set(given)
                    if tuple(getattr(expected[k], "shape", ())) != tuple(getattr(given[k], "shape", ())))
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append("{} of the model's {} tensors missing ({})".format(
            len(missing), len(expected), _shown(missing)))
    if unexpected:
        parts.append("{} unexpected ({})".format(len(unexpected), _shown(unexpected)))
    if shapes:
        parts.append("{} of another shape ({}: {} in the file, {} in the model)".format(
            len(shapes), shapes[0], list(given[shapes[0]].shape), list(expected[shapes[0]].shape)))
    for a, b, verb in ((given, expected, "strip"), (expected, given, "add")):
        # One prefix on every key of a that b lacks: b's keys are a's without it.
        prefixes = {k.split(".", 1)[0] + "." for k in a if "." in k}
        for p in sorted(prefixes):
            if all(k.startswith(p) for k in a) and {k[len(p):] for k in a} == set(b):
                parts.append("every key of the {} starts with '{}': {} it".format(
                    "file" if a is given else "model", p, verb) + (
                        " (saved from a DataParallel wrapper?)" if p == "module." else ""))
    return "; ".join(parts)


def _floats(text, what):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError("{} must be comma-separated numbers, got '{}'".format(what, text))


def _prune(model, x, calibration, args):
    """Prune (and fine-tune) ``model`` in place as the options say; print per-exit accuracy
    before and after; returns the pruning record."""
    import torch
    from edgesdk.converters.pruning import exit_accuracy, fine_tune, prune_channels
    xy = calibration if isinstance(calibration, tuple) else None
    if (args.fine_tune_epochs or args.prune_importance == "taylor") and xy is None:
        raise InputError("--fine-tune-epochs and taylor importance need labels: give "
                         "--calibration-data with 'x' and 'y'")
    ratios = None
    if args.prune_stages:
        ratios = _floats(args.prune_stages, "--prune-stages")
    before = exit_accuracy(model, xy[0], xy[1]) if xy else None
    record = prune_channels(model, torch.from_numpy(np.ascontiguousarray(x)),
                            ratio=args.prune if args.prune is not None else 0.0,
                            stage_ratios=ratios, importance=args.prune_importance,
                            stages_attr=args.stages_attr, heads_attr=args.heads_attr, data=xy)
    rows = []
    if xy:
        rows.append(("before pruning", before))
        rows.append(("pruned", exit_accuracy(model, xy[0], xy[1])))
    if args.fine_tune_epochs:
        fine_tune(model, xy[0], xy[1], epochs=args.fine_tune_epochs, lr=args.fine_tune_lr,
                  log=lambda m: print(m, file=sys.stderr))
        record["fine_tune"] = {"epochs": args.fine_tune_epochs, "lr": args.fine_tune_lr,
                               "samples": int(len(xy[1]))}
        rows.append(("fine-tuned", exit_accuracy(model, xy[0], xy[1])))
    if rows and not args.json:
        from edgesdk.table import format_table
        print("per-exit accuracy on the calibration data ({:.0%} of the MACs left):".format(
            record["macs_after"] / float(record["macs_before"])))
        print(format_table(["model"] + ["exit {}".format(k) for k in range(len(before))],
                           [[n] + ["{:.2%}".format(a) for a in accs] for n, accs in rows]))
    record["exit_accuracy"] = {n: accs for n, accs in rows}
    return record


def exit_table_text(rows):
    """The per-exit comparison of FP32 and the selected builds, as a text table."""
    from edgesdk.table import format_table

    def pct(v):
        return "-" if v is None else "{:.2%}".format(v)
    def name(r):
        return "exit {}".format(r["exit"]) if isinstance(r["exit"], int) else r["exit"]

    def cell(r, key):
        cost = r.get("cost_" + key)
        return pct(r["accuracy_" + key]) + ("" if cost is None else " at {:.0%} of the MACs".format(cost))
    return format_table(["exit", "accuracy fp32", "accuracy selected", "top-1 agreement"],
                        [[name(r), cell(r, "fp32"), cell(r, "selected"), pct(r["agreement"])]
                         for r in rows])


def uncounted_lines(uncounted):
    """Warning lines for the nodes left out of the MAC counts (``{graph id: [node, ...]}``):
    those counts are too low and fractions built on them are wrong."""
    lines = []
    for gid, nodes in sorted(uncounted.items()):
        lines.append("  warning: {} MACs leave out {} node(s); the count is too low:".format(
            gid, len(nodes)))
        lines += ["    {} ({}): {}".format(n["node"], n["op"], n["why"]) for n in nodes]
    return lines


def _fraction(text):
    """``--scale``: a number or a fraction such as ``1/255``."""
    import argparse
    from fractions import Fraction
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError("expected a number or a fraction such as 1/255, got "
                                         "'{}'".format(text))
    if not value > 0:
        raise argparse.ArgumentTypeError("the scale must be > 0, got '{}'".format(text))
    return value


def preprocessing_from(args, raw_dtype=None):
    """The manifest preprocessing record from --scale/--mean/--std (None if none given).

    Without --scale the scale is 1/255 only when the example pixels are 8-bit (``raw_dtype``
    uint8): any other range needs it said, since a wrong scale converts fine and then
    predicts nonsense."""
    if args.scale is None and args.mean is None and args.std is None:
        return None
    if args.mean is None or args.std is None:
        raise InputError("give --mean and --std together (with --scale for pixels that are not "
                         "8-bit)")
    scale = args.scale
    if scale is None:
        if raw_dtype is None or np.dtype(raw_dtype) != np.uint8:
            raise InputError(
                "give --scale: preprocessing maps raw pixels to model input as (raw * scale - "
                "mean) / std, and the example data {}; e.g. --scale 1/255 for 0..255 pixels, "
                "--scale 1/16 for 0..16".format("are {}, not 8-bit pixels".format(
                    np.dtype(raw_dtype)) if raw_dtype is not None else "do not show the range"))
        scale = 1.0 / 255.0
    return {"scale": scale, "mean": _floats(args.mean, "--mean"), "std": _floats(args.std, "--std")}


def run(args):
    """Load the model and example data, then call :func:`edgesdk.converters.convert`."""
    from edgesdk.converters import ConvertOptions, convert
    from edgesdk.runtime.datafiles import load_npz
    from edgesdk.runtime.input_stats import describe_input
    from edgesdk.runtime.inputs import preprocess
    loaded = {}

    def npz(path):  # each file read once
        if path not in loaded:
            loaded[path] = load_npz(path)
        return loaded[path]

    raw_dtype = None
    if args.example_data or args.calibration_data:
        raw_dtype = npz(args.example_data or args.calibration_data)[0].dtype
    pre = preprocessing_from(args, raw_dtype)
    if pre is not None and args.scale is None:
        print("preprocessing: --scale 1/255 (the example data are 8-bit pixels)", file=sys.stderr)

    def model_inputs(path, what):
        x, y = npz(path)
        if x.dtype.kind in "ui":
            if pre is None:
                raise InputError("{} holds raw integer pixels; give --mean/--std so they can be "
                                 "preprocessed".format(what))
            x = preprocess(x, {"name": "x", "preprocessing": pre})
        return x, y

    from edgesdk.targets import get_target
    calibration = None
    pruning = args.prune is not None or args.prune_stages
    wants_data = (args.quantize not in (None, "fp32") or args.precisions or args.profile or pruning
                  or get_target(args.target).default_precision != "fp32")
    if wants_data and (args.calibration_data or args.example_data):
        cx, cy = model_inputs(args.calibration_data or args.example_data,
                              "--calibration-data" if args.calibration_data else "--example-data")
        calibration = (cx, cy) if cy is not None else cx
    if args.example_data:
        x = model_inputs(args.example_data, "--example-data")[0][:16]
    elif args.input_shape:
        try:
            shape = [int(v) for v in args.input_shape.split(",")]
        except ValueError:
            raise InputError("--input-shape must be comma-separated integers, e.g. 1,28,28")
        x = np.random.default_rng(0).standard_normal([8] + shape).astype(np.float32)
    else:
        raise InputError("give --example-data (preferred: real inputs) or --input-shape")
    model = load_model(args.model, None if args.random_weights else args.weights)
    records = []
    if pruning:
        records.append(_prune(model, x, calibration, args))
    options = ConvertOptions(
        stages_attr=args.stages_attr, heads_attr=args.heads_attr, target=args.target,
        opset=args.opset, policy=args.policy, threshold=args.threshold, preprocessing=pre,
        atol=args.atol, rtol=args.rtol, force=args.force, progress=not args.json,
        precisions=[p.strip() for p in args.precisions.split(",") if p.strip()],
        quantize=args.quantize, calibration_data=calibration,
        calibration_method=args.calibration_method, profile=args.profile, device=args.device,
        profile_metric=METRICS[args.profile_metric], profile_batch=args.profile_batch,
        min_agreement=args.min_agreement, exit_accuracy_drop=args.exit_accuracy_drop,
        pruning=records, exit_aware=args.exit_aware)
    report = convert(model, x, args.output, options)
    if args.json:
        print(json.dumps({"bundle": report.path, "max_abs_error": report.max_abs_error,
                          "stage_macs": report.stage_macs, "exit_macs": report.exit_macs,
                          "builds": report.builds, "choices": report.choices,
                          "exit_table": report.exit_table, "warnings": report.warnings + report.precision_warnings,
                          "macs_uncounted": report.macs_uncounted,
                          "input_statistics": report.input_statistics,
                          "pruning": [{k: v for k, v in r.items() if k != "history"} for r in records]}))
        return 0
    print("wrote {}".format(report.path))
    for k, err in enumerate(report.max_abs_error):
        print("  exit {}: stage {:.2f}M + head {:.3f}M MACs, ONNX Runtime vs PyTorch max abs "
              "error {:.2e}".format(k, report.stage_macs[k] / 1e6, report.exit_macs[k] / 1e6, err))
    for line in uncounted_lines(report.macs_uncounted):
        print(line)
    for line in describe_input({"preprocessing": pre, "statistics": report.input_statistics}):
        print("  " + line)
    for gid, agreement in sorted(report.builds.items()):
        print("  {}: {}".format(gid, ", ".join(
            "{} build, top-1 agreement with fp32 {:.2%}".format(p, a)
            for p, a in sorted(agreement.items()) if p != "fp32")))
    if report.exit_table:
        print(exit_table_text(report.exit_table))
    for w in report.warnings + report.precision_warnings:
        print("warning: " + w)
    if report.choices:
        c = report.choices
        print("chosen from the profile of device {} ({}):".format(c["device"], c["metric"]))
        print("  builds: {}".format(", ".join("{}={}".format(g, b) for g, b in c["builds"].items())))
        print("  dropped exits: {}".format(", ".join(map(str, c["dropped_exits"])) or "none"))
        for sid, g in sorted(c.get("gates", {}).items()):
            print("  gates of {}: {}".format(sid, _gates_line(g)))
    return 0


def _gates_line(g):
    """What ``convert --profile`` did with one stage's gates, for its summary."""
    if g["gated"] is None:
        return "not measured (profile again): kept"
    saves = ", ".join("{:.4g}".format(v) for v in g["savings"])
    if not g["kept"]:
        return "each saves {} per sample: dropped, the stage's own graph ({:.4g}) runs".format(
            saves, g["ungated"])
    return "each saves {} per sample; {:.4g} per sample with {} vs {:.4g} ungated".format(
        saves, g["gated"], "blocks {} always computed".format(g["dropped"]) if g["dropped"]
        else "every gate", g["ungated"])
