"""Compare builds of a bundle (or several bundles) on the same inputs, tensor by tensor: every
stage's outputs and every exit's logits against the first (or saved) outputs, within --atol
and --rtol, with each exit's top-1 agreement. Exit code 0: every tensor matched; 1: one did
not.

  edgesdk compare B.edgebundle --builds onnx:fp32 --builds int8 --data test.npz
  edgesdk compare B.edgebundle --builds tvm --save-outputs board.npz      (on the board)
  edgesdk compare B.edgebundle --load-outputs board.npz                   (on the host)
"""
import json
import sys

from edgesdk.errors import InputError
from edgesdk.runtime.cli.options import parse_build_request, add_providers_argument
from edgesdk.table import format_table, printable


def add_arguments(p):
    p.add_argument("bundle", nargs="+", help="NAME.edgebundle (more than one: each runs its "
                                             "selected builds, compared with the first)")
    p.add_argument("--builds", type=parse_build_request, action="append", default=[],
                   metavar="BUILD[,fallback]",
                   help="a set of builds of the first bundle to run (repeatable: each is "
                        "compared with the first): a precision (int8), a format (tvm) or "
                        "FORMAT:PRECISION; ',fallback' keeps the selected build where a graph "
                        "lacks it")
    p.add_argument("--data", help="inputs: an .npz (x) or a folder of images (default: "
                                  "generated from the input's recorded statistics)")
    p.add_argument("--samples", type=int, default=16, help="generated inputs (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--save-outputs", metavar="FILE.npz",
                   help="write the last run's outputs, with the inputs, for comparing elsewhere")
    p.add_argument("--load-outputs", metavar="FILE.npz",
                   help="compare with outputs saved by --save-outputs (on their inputs)")
    add_providers_argument(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _runs(args):
    """``[(label, bundle path, (request, fallback))]`` of the runs asked for."""
    first, others = args.bundle[0], args.bundle[1:]
    runs = [("{} {}".format(first, _describe(b)), first, b) for b in args.builds] or \
        [(first, first, (None, False))]
    return runs + [(path, path, (None, False)) for path in others]


def _describe(request):
    want, fallback = request
    text = ":".join(want) if isinstance(want, (tuple, list)) else str(want)
    return "--builds " + text + (",fallback" if fallback else "")


def run(args):
    """Run each set of builds on the same inputs and compare their tensors."""
    from edgesdk.runtime import compare
    from edgesdk.runtime.engine import load_bundle
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if args.atol < 0 or args.rtol < 0:
        raise InputError("--atol and --rtol must be >= 0")
    runs = _runs(args)
    if len(runs) < 2 and not args.load_outputs and not args.save_outputs:
        raise InputError("nothing to compare: give two --builds, a second bundle, or "
                         "--load-outputs (or --save-outputs to record this run's outputs)")
    reference, x, ref_label = None, None, None
    if args.load_outputs:
        if args.data:
            raise InputError("--load-outputs compares on the saved inputs: give no --data")
        reference, x, about = compare.load_outputs(args.load_outputs)
        ref_label = "{} (saved: {})".format(args.load_outputs, ", ".join(
            "{} {}".format(k, about[k]) for k in ("bundle", "builds", "machine") if k in about))
    results, outputs = [], None
    for label, path, (request, fallback) in runs:
        model = load_bundle(path, builds=request, fallback=fallback, providers=args.providers)
        if x is None:
            if args.data:
                from edgesdk.runtime.datafiles import load_inputs
                x = load_inputs(args.data, model.input_spec, model.memory.limit)[0]
            else:
                x = compare.generated_inputs(model.input_spec, args.samples, args.seed)
        model.memory.check_batch(min(args.batch_size, len(x)))
        outputs = compare.outputs_of(model, x, args.batch_size)
        if reference is None:
            reference, ref_label = outputs, label
            builds = model.ran
            continue
        rows = compare.compare_tensors(reference, outputs, args.atol, args.rtol)
        results.append({"run": label, "builds": model.ran, "tensors": rows,
                        "graphs": compare.graph_summary(rows),
                        "passed": all(r["passed"] for r in rows)})
        builds = model.ran
    if args.save_outputs:
        import os
        import platform
        compare.save_outputs(args.save_outputs, outputs, x, {
            "bundle": os.path.basename(runs[-1][1].rstrip("/")), "machine": platform.machine(),
            "builds": sorted({"{} {}".format(b["format"], b["precision"])
                              for b in builds.values()})})
    passed = all(r["passed"] for r in results)
    out = {"reference": ref_label, "samples": int(len(x)), "atol": args.atol,
           "rtol": args.rtol, "results": results, "passed": passed,
           "saved_outputs": args.save_outputs}
    if args.json:
        print(json.dumps(out))
    else:
        _print(out)
    if not passed:
        sys.stderr.write("edgesdk compare: outputs differ beyond atol={} rtol={}\n".format(
            args.atol, args.rtol))
    return 0 if passed else 1


def _num(v, fmt="{:.3g}"):
    return "-" if v is None else fmt.format(v)


def _print(out):
    print("reference: {}; {} samples; tolerance atol={} rtol={}".format(
        printable(out["reference"]), out["samples"], out["atol"], out["rtol"]))
    for r in out["results"]:
        print("\n{}: {}".format(printable(r["run"]), "passed" if r["passed"] else "FAILED"))
        rows = [[g["graph"], g["tensors"], _num(g["max_abs"]), _num(g["mean_abs"]),
                 _num(g["max_rel"]), _num(g["top1_agreement"], "{:.2%}"),
                 "ok" if g["passed"] else "FAILED: " + g["first_failing"]] for g in r["graphs"]]
        print(format_table(["graph", "tensors", "max abs", "mean abs", "max rel", "top-1",
                            "status"], rows))
        failing = next((t for t in r["tensors"] if not t["passed"]), None)
        if failing is not None:
            print("first failing tensor: {} ({})".format(failing["tensor"], failing.get(
                "problem") or "max abs error {}, {} non-finite".format(
                    _num(failing["max_abs"]), failing["non_finite"])))
    if out["saved_outputs"]:
        print("\noutputs and inputs saved to {}".format(printable(out["saved_outputs"])))
