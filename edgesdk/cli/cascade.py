"""Build a resolution cascade: one model at several input resolutions in one bundle.

The model is given as for `edgesdk convert` (FILE.py:NAME); one --weights file serves every
resolution (shared weights), or give one per resolution. Example and calibration images are
raw pixels (.npz 'x', any size: the cascade's OpenCV pipeline crops and resizes them); with
labels ('y') in --calibration-data the thresholds are chosen so the cascade stays within
--max-accuracy-drop points of the full-resolution model.
"""
import json

from edgesdk.cli.convert import _fraction
from edgesdk.errors import InputError
from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("--model", required=True, help="FILE.py:NAME or package.module:NAME")
    p.add_argument("--weights", action="append", default=[],
                   help="state_dict (.pt); once for shared weights or once per resolution")
    p.add_argument("--resolutions", required=True,
                   help="cheapest first, e.g. 14,28 or 96x128,192x256")
    p.add_argument("--example-data", required=True, help=".npz whose 'x' holds raw images")
    p.add_argument("--calibration-data", help=".npz with raw images 'x' and labels 'y'")
    p.add_argument("--max-accuracy-drop", type=float, default=0.5,
                   help="points below the full-resolution model on the calibration data")
    p.add_argument("--confidence", type=float, default=0.99,
                   help="confidence that the cascade's accuracy drop stays within "
                        "--max-accuracy-drop (default 0.99)")
    p.add_argument("--resize", default="area", help="OpenCV interpolation: area, linear, "
                                                     "nearest, cubic (default area)")
    p.add_argument("--crop", type=float, help="central fraction of each image kept before resizing")
    p.add_argument("--random-weights", action="store_true",
                   help="convert the model as constructed (untrained: for timing only)")
    p.add_argument("--scale", type=_fraction,
                   help="preprocessing: multiply raw pixels by this, e.g. 1/255 (default 1/255 "
                        "only for 8-bit example pixels)")
    p.add_argument("--mean", required=True, help="preprocessing: per-channel means")
    p.add_argument("--std", required=True, help="preprocessing: per-channel stds")
    p.add_argument("--policy", default="max-softmax", help="max-softmax, entropy, margin")
    p.add_argument("-o", "--output", required=True, help="bundle path, NAME.edgebundle")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_resolutions(text):
    """``"14,28"`` or ``"96x128,192x256"`` -> ``[(14, 14), (28, 28)]`` / ``[(96, 128), ...]``."""
    sizes = []
    for item in text.split(","):
        try:
            parts = [int(v) for v in item.strip().lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2) or min(parts) < 1:
            raise InputError("--resolutions takes N or HxW items, comma separated; got "
                             "'{}'".format(item))
        sizes.append((parts[0], parts[-1]))
    return sizes


def run(args):
    """Load the model(s) and images, then call :func:`~edgesdk.converters.cascade.convert_cascade`."""
    from edgesdk.cli.convert import load_model, preprocessing_from
    from edgesdk.converters.cascade import convert_cascade
    from edgesdk.runtime.datafiles import load_npz
    sizes = parse_resolutions(args.resolutions)
    if len(args.weights) not in (0, 1, len(sizes)):
        raise InputError("give --weights once (shared weights) or once per resolution ({}), "
                         "got {}".format(len(sizes), len(args.weights)))
    if bool(args.weights) == args.random_weights:
        raise InputError("give --weights (once, or once per resolution) or --random-weights "
                         "(untrained, for timing only)")
    weights = args.weights if len(args.weights) > 1 else (args.weights or [None])
    models = [load_model(args.model, w).eval() for w in weights]
    images, _ = load_npz(args.example_data)
    cal_x = cal_y = None
    if args.calibration_data:
        cal_x, cal_y = load_npz(args.calibration_data)
        if cal_y is None:
            raise InputError("{} has no labels 'y' to choose thresholds with".format(
                args.calibration_data))
    spec = convert_cascade(models if len(models) > 1 else models[0], sizes, images, args.output,
                           labels=cal_y, calibration_images=cal_x,
                           max_accuracy_drop=args.max_accuracy_drop, policy=args.policy,
                           resize=args.resize, crop=args.crop, confidence=args.confidence,
                           preprocessing=preprocessing_from(args, images.dtype), force=args.force)
    if args.json:
        print(json.dumps(spec, indent=2))
        return 0
    from edgesdk.table import format_table
    print("wrote {}".format(args.output))
    print(format_table(["level", "resolution", "threshold", "bundle"],
                       [[lv["id"], "{}x{}".format(*lv["resolution"]),
                         "-" if lv["threshold"] is None else "{:.4f}".format(lv["threshold"]),
                         lv["bundle"]] for lv in spec["levels"]]))
    record = spec.get("chosen_from")
    if record:
        print("calibration: accuracy {:.2%} (full resolution {:.2%}), leaving per level {}".format(
            record["accuracy_cascade"], record["accuracy_full"], record["leaving_per_level"]))
    return 0
