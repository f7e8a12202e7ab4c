"""Choose per-exit thresholds on labelled held-out data (.npz with 'x' and 'y').

Give one objective: --max-accuracy-drop POINTS (cheapest thresholds whose drop below the final
exit's accuracy is certified within that many percentage points with probability
--confidence, default 0.99: an exact Clopper-Pearson bound tested along a label-free path of
settings; a target the data cannot certify is refused with the smallest one it can),
--max-cost-fraction F (best accuracy at a mean cost of at most F of the full model), or with
--profile DB (measured by `edgesdk profile --db`) --budget-latency-ms MS / --budget-energy-mj MJ
(best accuracy whose predicted mean cost per sample meets the measured budget). Costs are
counted MACs without --profile, the device's measured table with it.
"""
import json

from edgesdk.errors import InputError
from edgesdk.table import format_table
from edgesdk.runtime.cli.options import add_wait_argument


def add_arguments(p):
    add_wait_argument(p)
    p.add_argument("bundle", help="path to NAME.edgebundle (its manifest is updated)")
    p.add_argument("--data", required=True, help=".npz with 'x' inputs and 'y' integer labels")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--max-accuracy-drop", type=float, metavar="POINTS")
    goal.add_argument("--max-cost-fraction", type=float, metavar="F")
    goal.add_argument("--budget-latency-ms", type=float, metavar="MS")
    goal.add_argument("--budget-energy-mj", type=float, metavar="MJ")
    p.add_argument("--profile", metavar="DB", help="profile database with this bundle's measured costs")
    p.add_argument("--device", help="device fingerprint in the database (when it holds several)")
    p.add_argument("--p99", action="store_true", help="budget per-graph p99 latencies, not means")
    p.add_argument("--batch", type=int, default=1, help="batch size the costs are taken at (default 1)")
    p.add_argument("--confidence", type=float, default=0.99,
                   help="probability that the accuracy drop stays within --max-accuracy-drop "
                        "(default 0.99; 0 compares point estimates, no guarantee)")
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
                    policy=args.policy, profile=args.profile, device=args.device,
                    budget_latency_ms=args.budget_latency_ms, budget_energy_mj=args.budget_energy_mj,
                    p99=args.p99, batch=args.batch,
                    threads=args.threads, progress=not args.json)
    p = res.point
    risk = res.risk or {}
    cost_of = cost_label(res)
    if args.json:
        print(json.dumps({"thresholds": p.thresholds, "accuracy": p.accuracy,
                          "final_exit_accuracy": res.final_exit_accuracy,
                          "mean_cost_fraction": res.cost_fraction, "mean_cost": p.mean_cost,
                          "unit": res.unit, "cost_fraction_of": cost_of,
                          "exit_fractions": p.exit_fractions, "objective": res.objective,
                          "policy": res.policy, "samples": res.samples,
                          "accuracy_drop_bound_points": risk.get("accuracy_drop_bound_points"),
                          "bound_samples": risk.get("samples"),
                          "confidence": risk.get("confidence"), "method": risk.get("method"),
                          "risk": risk}))
        return 0
    rows = [["exit {}".format(k), "always" if k == len(p.thresholds) - 1 else
             ("off" if t is None else "{:.6g}".format(t)), "{:.1%}".format(f)]
            for k, (t, f) in enumerate(zip(p.thresholds, p.exit_fractions))]
    print(format_table(["exit", res.policy + " threshold", "samples leaving"], rows))
    print("\non {} samples: accuracy {:.2%} (final exit alone {:.2%}), predicted mean cost "
          "{:.4g} {} per sample, {:.1%} {}".format(
              res.samples, p.accuracy, res.final_exit_accuracy, p.mean_cost, res.unit,
              res.cost_fraction, cost_of))
    print(bound_line(risk))
    m = read_bundle(args.bundle, verify=False).manifest
    partial = [e["id"] for e in m["stages"] + m["exits"] if e.get("macs_uncounted")]
    if res.unit == "MACs" and partial:
        print("warning: the MAC counts of {} leave nodes out (see `edgesdk inspect`): the costs "
              "and this fraction are too low there; calibrate with --profile for measured "
              "costs".format(", ".join(partial)))
    print("thresholds written to {}".format(args.bundle))
    return 0


def cost_label(res):
    """What the cost fraction is a fraction of: counted MACs or a measured metric."""
    if res.unit == "MACs":
        return "of the full model's MACs (heads included)"
    return "of the full model's measured {}".format(res.cost_model.split(" per ")[0][len("measured "):])


def bound_line(risk):
    """One line on the accuracy drop's bound: value, n, confidence, method."""
    if risk.get("accuracy_drop_bound_points") is None:
        return "accuracy drop: {:.3g} points observed on {} samples ({})".format(
            risk.get("observed_drop_points", float("nan")), risk.get("samples"), risk.get("method"))
    return ("accuracy drop: at most {:.3g} points with confidence {:g} ({} of {} samples the "
            "final exit gets right lost; {})".format(
                risk["accuracy_drop_bound_points"], risk["confidence"], risk["losses"],
                risk["samples"], risk["method"]))
