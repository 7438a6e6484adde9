"""Memory of a loaded model: RSS, anonymous memory and file pages (Linux /proc/self/status) right
after `LLM(...)`, and after one short generation, and the process's peak RSS (VmHWM, the Python
interpreter and imports included).

    python benchmarks/load_memory.py [--model qwen2.5-coder-1.5b] [--backend auto|torch|gguf] [--drafter auto]
    SPECDRAFT_PACK=0 python benchmarks/load_memory.py ...   # float32 weights left dense

The model file is memory-mapped: its pages count as file pages (clean, which the kernel can drop
under pressure); copies made at load (fused products, packed weights) count as anonymous memory.
"""

from __future__ import annotations

import argparse

from specdraft.api import LLM


def status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process, in GB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "gguf"])
    ap.add_argument("--drafter", default="plain", help="built at load and used for the generation")
    a = ap.parse_args()
    base = status()
    llm = LLM(a.model, progress=False, backend=a.backend, drafter=a.drafter)
    loaded = status()
    llm.generate("def fib(n):", max_new_tokens=8)
    ran = status()
    print(f"{a.model}, backend {llm.backend}, dtype {llm.dtype_name}, packed {llm.packed}, drafter {a.drafter}")
    for label, s in (("after load", loaded), ("after 8 tokens", ran)):
        print(f"{label:>15}: RSS {s['VmRSS'] - base['VmRSS']:.2f} GB, anonymous {s['RssAnon'] - base['RssAnon']:.2f} GB, "
              f"file pages {s['RssFile'] - base['RssFile']:.2f} GB")
    print(f"{'peak':>15}: RSS {ran['VmHWM']:.2f} GB (the whole process)")


if __name__ == "__main__":
    main()
