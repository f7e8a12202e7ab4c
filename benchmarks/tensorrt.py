"""TensorRT engines of the sample model on this machine's NVIDIA GPU vs ONNX Runtime on its
CPU, side by side in one run. Needs a GPU, TensorRT's Python package and cuda-python (or
PyCUDA); CI machines have none, so this benchmark is not part of `make bench`.

On the trained sample model (4 stages, 4 exit heads):
 1. prepare the bundle for TensorRT (target x86-nvidia, or --target) and build every engine
    here with edgesdk's on-device builder;
 2. compare every exit's logits with ONNX Runtime's FP32 builds on the test images;
 3. run early exit at batch 1 with the bundle's thresholds through both, interleaved:
    agreement of the final labels and exits, and the latency ratio.
``--module tensorrt_rtx`` runs TensorRT for RTX instead of TensorRT (same Python API for
everything edgesdk calls; it builds FP32 engines only here). The last line is one JSON object.
"""
import datetime
import importlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from common import sample_parser


def main(argv=None):
    parser = sample_parser(__doc__)
    parser.add_argument("--target", default="x86-nvidia")
    parser.add_argument("--precision", default="fp16", choices=["fp32", "fp16"])
    parser.add_argument("--module", default="tensorrt",
                        help="the TensorRT Python package to build and run with")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    args = parser.parse_args(argv)
    sys.modules["tensorrt"] = importlib.import_module(args.module)

    from run import prepare, to_model_input
    from edgesdk.converters.tensorrt.prepare import prepare_tensorrt
    from edgesdk.runtime.cuda_memory import cuda
    from edgesdk.runtime.engine import load_bundle
    from edgesdk.runtime.executors.tensorrt_build import build_engines

    splits, _, bundle, _ = prepare(args.workdir, epochs=args.epochs, threads=args.threads)
    x = to_model_input(splits["test"][0][:args.samples])
    y = splits["test"][1][:args.samples]
    work = tempfile.mkdtemp(prefix="edgesdk-trt-")
    try:
        path = os.path.join(work, "mnist_resnet.edgebundle")
        shutil.copytree(bundle, path)
        prepare_tensorrt(path, args.target, precision=args.precision, batch=(1, 1, 64))
        t0 = time.time()
        records = build_engines(path, progress=False)
        build_s = time.time() - t0
        ort = load_bundle(path, threads=args.threads, builds=("onnx", "fp32"))
        trt = load_bundle(path, threads=args.threads, builds="tensorrt")
        errors = [float(np.abs(a - b).max()) for a, b in zip(ort.exit_logits(x), trt.exit_logits(x))]
        agree_per_exit = [float((a.argmax(1) == b.argmax(1)).mean())
                          for a, b in zip(ort.exit_logits(x), trt.exit_logits(x))]
        times = {"ort": [], "trt": []}
        results = {}
        for _ in range(args.rounds):
            for name, model in (("ort", ort), ("trt", trt)):
                model.run(x[:8])  # warm up
                runs = [model.run(x[i:i + 1]) for i in range(len(x))]
                times[name].append(float(np.mean([r.total_ms for r in runs])))
                results[name] = runs
        labels = {k: np.array([r.labels[0] for r in v]) for k, v in results.items()}
        exits = {k: np.array([r.exit_index[0] for r in v]) for k, v in results.items()}
        out = {
            "date": datetime.date.today().isoformat(),
            "device": cuda().device(), "module": args.module,
            "tensorrt": records[0]["built_with"]["tensorrt"], "precision": args.precision,
            "samples": int(len(x)), "engine_build_seconds": round(build_s, 1),
            "max_abs_logit_error_per_exit": errors,
            "top1_agreement_per_exit": agree_per_exit,
            "early_exit_label_agreement": float((labels["ort"] == labels["trt"]).mean()),
            "early_exit_same_exit": float((exits["ort"] == exits["trt"]).mean()),
            "accuracy_ort": float((labels["ort"] == y).mean()),
            "accuracy_trt": float((labels["trt"] == y).mean()),
            "ms_per_sample_ort_cpu": float(np.median(times["ort"])),
            "ms_per_sample_trt_gpu": float(np.median(times["trt"])),
            "trt_gpu_vs_ort_cpu_latency": float(np.median(times["trt"]) / np.median(times["ort"])),
        }
        print(json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
