"""A process for tests/test_kill_resume.py to kill: tiny training runs and exports, one thread.

    python tests/kill_worker.py train OUT STEPS        train (or resume) the tiny transformer to STEPS updates
    python tests/kill_worker.py export RUN_A RUN_B OUT N   export A, B, A, ... into OUT, N times
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_training import tiny_gpt_cfg, tiny_vae  # noqa: E402

# Checkpoint after every update, so a kill at any moment has a recent one to resume from.
TRAIN_CFG = dict(ckpt_every=1, log_every=1, self_correction=0.2, cfg_dropout=0.5)


def train(out: str, steps: int) -> None:
    from stepvar.training import train_transformer

    train_transformer(tiny_gpt_cfg(**TRAIN_CFG), out, steps, vae=tiny_vae(), resume="auto",
                      on_note=lambda msg: print(f"note: {msg}", file=sys.stderr, flush=True))


def export(run_a: str, run_b: str, out: str, n: int) -> None:
    from stepvar.training import export_embedded

    for i in range(n):
        export_embedded(run_a if i % 2 == 0 else run_b, out)
        print(f"exported {i + 1}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    what, *args = sys.argv[1:]
    if what == "train":
        train(args[0], int(args[1]))
    elif what == "export":
        export(args[0], args[1], args[2], int(args[3]))
    else:
        raise SystemExit(f"unknown worker {what!r}")
