"""Choose per-exit thresholds on labelled held-out data (.npz with 'x' and 'y').

Give one objective: --max-accuracy-drop POINTS (cheapest thresholds within that many
percentage points of the final exit's accuracy, held with --confidence, default 0.99) or
--max-cost-fraction F (best accuracy at a mean cost of at most F of the full model; cost =
counted MACs).
"""
import json

from edgesdk.errors import InputError
from edgesdk.table import format_table


def add_arguments(p):
    p.add_argument("bundle", help="path to NAME.edgebundle (its manifest is updated)")
    p.add_argument("--data", required=True, help=".npz with 'x' inputs and 'y' integer labels")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--max-accuracy-drop", type=float, metavar="POINTS")
    goal.add_argument("--max-cost-fraction", type=float, metavar="F")
    p.add_argument("--confidence", type=float, default=0.99,
                   help="confidence that the accuracy drop stays within --max-accuracy-drop "
                        "(default 0.99; 0 compares point estimates)")
    p.add_argument("--policy", help="switch every exit to this policy (max-softmax, entropy, margin)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args):
    """Load the data, call :func:`edgesdk.converters.calibrate`, print the chosen thresholds."""
    from edgesdk.bundle import read_bundle
    from edgesdk.converters import calibrate
    from edgesdk.runtime.datafiles import load_inputs
    spec = read_bundle(args.bundle, verify=False).manifest["inputs"][0]
    x, y, _ = load_inputs(args.data, spec)
    if y is None:
        raise InputError("{} has no 'y' labels; calibration needs labelled data".format(args.data))
    res = calibrate(args.bundle, x, y, max_accuracy_drop=args.max_accuracy_drop,
                    max_cost_fraction=args.max_cost_fraction, confidence=args.confidence,
                    policy=args.policy,
                    threads=args.threads, progress=not args.json)
    p = res.point
    if args.json:
        print(json.dumps({"thresholds": p.thresholds, "accuracy": p.accuracy,
                          "final_exit_accuracy": res.final_exit_accuracy,
                          "mean_cost_fraction": res.cost_fraction,
                          "exit_fractions": p.exit_fractions, "objective": res.objective,
                          "policy": res.policy, "samples": res.samples}))
        return 0
    rows = [["exit {}".format(k), "always" if k == len(p.thresholds) - 1 else
             ("off" if t is None else "{:.6g}".format(t)), "{:.1%}".format(f)]
            for k, (t, f) in enumerate(zip(p.thresholds, p.exit_fractions))]
    print(format_table(["exit", res.policy + " threshold", "samples leaving"], rows))
    print("\non {} samples: accuracy {:.2%} (final exit alone {:.2%}), mean cost {:.1%} of the "
          "full model".format(res.samples, p.accuracy, res.final_exit_accuracy, res.cost_fraction))
    print("thresholds written to {}".format(args.bundle))
    return 0
