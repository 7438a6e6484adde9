"""Time and peak memory of the prompt's prefill, whole or in chunks (`Decoder.prefill`).

    python benchmarks/prefill.py --model smollm2-135m --lengths 2000,8000 --chunks 0,512,1024,2048

For each prompt length (random token ids) and chunk size (0 = the whole prompt in one forward),
prints the median wall time of `--repeats` prefills and the peak resident memory above the loaded
model (VmHWM, reset before each run through /proc/self/clear_refs). The model loads as `LLM`
loads it (float32 on a CPU, packed for oneDNN).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import time
from pathlib import Path

import torch

from specdraft import LLM


_LIBC = ctypes.CDLL("libc.so.6")


def _vm(field: str) -> float:
    """A /proc/self/status memory field, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--lengths", default="2000,8000")
    ap.add_argument("--chunks", default="0,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    llm = LLM(a.model, dtype=a.dtype, backend="torch")
    model = llm.model
    print(f"{a.model}, {llm.dtype_name}, packed {llm.packed}, {torch.get_num_threads()} threads\n")
    print("| prompt tokens | chunk | prefill (median) | tokens/s | peak memory above the model |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in a.lengths.split(",")):
        ids = torch.randint(0, model.cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        for chunk in (int(x) for x in a.chunks.split(",")):
            times, peaks = [], []
            for _ in range(a.repeats):
                gc.collect()
                _LIBC.malloc_trim(0)  # hand freed memory back, so a run's peak is not hidden by an earlier run's pages
                cache = model.new_cache(n + 1)
                base = _vm("VmRSS")
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
                t = time.perf_counter()
                with torch.inference_mode():
                    model.prefill(ids, cache, chunk=chunk or n)
                times.append(time.perf_counter() - t)
                peaks.append(_vm("VmHWM") - base)
                del cache
            med = statistics.median(times)
            print(f"| {n} | {chunk or 'whole'} | {med:.2f} s | {n / med:.0f} | {max(peaks):.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
