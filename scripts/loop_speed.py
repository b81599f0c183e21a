"""Transformer-loop seconds of several configurations in one process, without the VAE decode.

    python scripts/loop_speed.py --model infinity-125m --resolution 1024 \
        --methods "dense,fastvar-skip:cfg_drop_from=-3,fastvar-skip" --out loop.json

Each configuration runs once, in the order given, through Pipeline.generate(decode=False): the same
transformer-loop time (`transformer_s`) that `stepvar bench` reports, without the decode that is the
same for every method. For a machine too loaded to finish a full `stepvar bench` (whose 1024-px decode
dominates its time on a CPU); on a quiet machine use `stepvar bench`, which also warms up, repeats,
interleaves and reports memory and FLOPs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stepvar.eval.measure import cpu_busy_fraction
from stepvar.pipeline import load_pipeline
from stepvar.pruning.registry import make_pruner_from_spec, split_method_list
from stepvar.sampling import SamplingConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="infinity-125m")
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--methods", required=True)
    ap.add_argument("--prompt", default="a lighthouse at dawn")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pipe = load_pipeline(a.model, device="cpu")
    sched = pipe.schedule(resolution=a.resolution)
    sampling = SamplingConfig.for_preset(a.model, seed=0)
    pruners = [make_pruner_from_spec(spec) for spec in split_method_list(a.methods)]  # bad names fail before any run
    for pr in pruners:
        pr.validate(sched, len(pipe.model.blocks))
    res = {"model": a.model, "model_status": pipe.status, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "schedule": sched.describe(), "cpu_busy_before": cpu_busy_fraction(),
           "start_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": []}
    for pr in pruners:
        t0 = time.process_time()
        r = pipe.generate([a.prompt], sched, pr, sampling, decode=False)
        res["runs"].append({"spec": pr.name, "transformer_s": r.timings["transformer_s"], "cpu_s": time.process_time() - t0,
                            "per_scale_s": [t.seconds for t in r.sample.timings],
                            "skipped": [t.si for t in r.sample.timings if t.skipped]})
        with open(a.out, "w", encoding="utf-8") as f:  # after every run: a stopped measurement keeps what it did
            json.dump(res, f, indent=1)
        print(f"{pr.name}: transformer loop {r.timings['transformer_s']:.2f} s", flush=True)
    res["end_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
