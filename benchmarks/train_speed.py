"""Training speed of the CTC layer / Medusa heads with bf16 autocast and in fp32, on this CPU.

    python benchmarks/train_speed.py --data DIR [--model smollm2-135m] [--kind ctc] [--steps 30]

`specdraft train` autocasts to bf16 only where bf16 runs natively (`runtime.cpu.native_bf16`);
this times both settings on the same batches (optimizer steps per second, the first 3 not counted),
interleaved step by step so that a change in the machine's load hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from specdraft.runtime import cpu
from specdraft.runtime.cpu import native_bf16
from specdraft.train.trainer import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kind", default="ctc", choices=["ctc", "medusa"])
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    trainers = {}
    real = cpu.fast_dtype
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.bfloat16, torch.float32):
            cpu.fast_dtype = lambda device, dtype=dtype: dtype
            try:
                trainers[dtype] = Trainer(a.model, Path(a.data), Path(tmp) / str(dtype), TrainConfig(a.kind, steps=1000),
                                          progress=False)
            finally:
                cpu.fast_dtype = real
    times: dict[torch.dtype, list[float]] = {d: [] for d in trainers}
    for step in range(a.steps + 3):
        idx = trainers[torch.float32].train_idx[step * 128:(step + 1) * 128]
        for dtype, tr in trainers.items():
            t = time.perf_counter()
            loss = tr.loss(tr.samples.batch(idx, future=tr.cfg.feat > 0 or tr.cfg.kd > 0))
            tr.opt.zero_grad(set_to_none=True)
            loss.backward()
            tr.opt.step()
            if step >= 3:
                times[dtype].append(time.perf_counter() - t)
    print(f"{a.kind} on {a.model}, batch 128, native bf16 here: {native_bf16('cpu')}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for dtype, ts in times.items():
        name = "bf16 autocast" if dtype == torch.bfloat16 else "fp32"
        print(f"  {name:14s} {1 / statistics.median(ts):.2f} steps/s (median of {len(ts)})")


if __name__ == "__main__":
    main()
