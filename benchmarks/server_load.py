"""Load on `specdraft serve`: N concurrent streaming clients x R requests, with and without a drafter.

    python benchmarks/server_load.py --model smollm2-135m --drafters plain,lookup --clients 8 --requests 25

For each drafter a server process is started on a free loopback port; the official openai client
streams chat completions (prompts from benchmarks/prompts/mini.jsonl, greedy, --max-tokens each).
Prints requests/s, completion tokens/s, time to first token (median, p90), errors and the
server's peak RSS, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(model: str, drafter: str, clients: int, requests: int, max_tokens: int, prompts: list[str]) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "specdraft", "serve", "--model", model, "--drafter", drafter,
                             "--port", str(port), "--max-queue", str(clients * 2)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.5)

        def one_client(i: int):
            c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
            out = []
            for j in range(requests):
                t0 = time.perf_counter()
                ttft, tokens, ok = None, 0, True
                try:
                    stream = c.chat.completions.create(
                        model=model, max_tokens=max_tokens, temperature=0, stream=True,
                        stream_options={"include_usage": True},
                        messages=[{"role": "user", "content": prompts[(i * requests + j) % len(prompts)]}])
                    for ch in stream:
                        if ch.choices and ch.choices[0].delta.content and ttft is None:
                            ttft = time.perf_counter() - t0
                        if ch.usage:
                            tokens = ch.usage.completion_tokens
                except openai.OpenAIError:
                    ok = False
                out.append((ok, ttft, tokens, time.perf_counter() - t0))
            return out

        # warm-up
        openai.OpenAI(base_url=url + "/v1", api_key="none").chat.completions.create(
            model=model, max_tokens=8, messages=[{"role": "user", "content": prompts[0]}])
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = [r for rs in pool.map(one_client, range(clients)) for r in rs]
        wall = time.perf_counter() - t0
        ttfts = sorted(r[1] for r in results if r[1] is not None)
        metrics = httpx.get(url + "/metrics").text
        tau = next((float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("specdraft_tau ")), None)
        return {
            "drafter": drafter, "requests": len(results), "errors": sum(not r[0] for r in results), "wall_s": wall,
            "requests_per_s": len(results) / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
            "ttft_median_s": statistics.median(ttfts), "ttft_p90_s": ttfts[int(0.9 * (len(ttfts) - 1))],
            "latency_median_s": statistics.median(r[3] for r in results), "tau": tau, "server_peak_rss_mb": rss_mb(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--drafters", default="plain,lookup")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    prompts = [json.loads(line)["turns"][0] for line in (HERE / "prompts" / "mini.jsonl").read_text().splitlines()]
    rows = [run(a.model, d, a.clients, a.requests, a.max_tokens, prompts) for d in a.drafters.split(",")]
    print(f"\n{a.model}, {a.clients} concurrent streaming clients x {a.requests} requests, max_tokens {a.max_tokens}, "
          f"greedy, bf16\n")
    print("| drafter | requests | errors | requests/s | tokens/s | TTFT median | TTFT p90 | latency median | tau | server peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['drafter']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['ttft_median_s']:.2f} s | {r['ttft_p90_s']:.2f} s | {r['latency_median_s']:.2f} s | "
              f"{r['tau'] if r['tau'] is None else round(r['tau'], 2)} | {r['server_peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
