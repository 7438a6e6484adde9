"""Load on `specdraft serve` and on llama-server: N concurrent streaming clients share R requests.

    python benchmarks/server_load.py --model smollm2-135m --clients 8 --requests 200 \
        --servers "batch 1=--max-batch 1;batch 8=--max-batch 8" --llama-server "plain,ngram" --disconnect

Each server is its own process on a free loopback port, warmed up by one request. The clients (the
official openai client, streaming chat completions) take the requests in turn: request i asks
prompt i of a mixed pool (benchmarks/prompts/mini.jsonl: chat, code, math) for 64-128 tokens
(greedy). A row reports the requests, errors, completion tokens/s over the whole run, time to first
token (median, p90), the server's resident memory after warm-up / at the end / at its peak, and
tau (specdraft's /metrics). Every row's answers are compared with the first row's, request by
request ("same answers"). With --disconnect the last specdraft server runs the load again with
half the clients closing each stream after a few chunks: the others' errors and answers are
reported ("disconnect" row; its "same answers" counts the requests that ran to the end).
llama-server rows (built by `make peers`) serve the model's GGUF file with `-np CLIENTS` slots.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import statistics
import subprocess
import sys
import threading
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


def status_mb(pid: int, key: str) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_ready(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 600
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.5)


def requests_for(n: int, prompts: list[str]) -> list[tuple[str, int]]:
    """Request i: prompt i of the pool, 64-128 tokens (spread evenly, the same in every run)."""
    return [(prompts[i % len(prompts)], 64 + (i * 37) % 65) for i in range(n)]


def load(url: str, model: str, clients: int, reqs: list[tuple[str, int]], pid: int, disconnect: bool = False) -> dict:
    """Run the requests with `clients` concurrent streaming clients; with `disconnect`, even-numbered
    clients close every stream after 3 chunks."""
    nxt = iter(range(len(reqs)))
    lock = threading.Lock()
    results: dict[int, tuple] = {}

    def client(c: int):
        cl = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)
        leaves = disconnect and c % 2 == 0
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            prompt, max_tokens = reqs[i]
            t0 = time.perf_counter()
            ttft, tokens, ok, text, chunks = None, 0, True, [], 0
            try:
                stream = cl.chat.completions.create(
                    model=model, max_tokens=max_tokens, temperature=0, stream=True,
                    stream_options={"include_usage": True}, messages=[{"role": "user", "content": prompt}])
                for ch in stream:
                    if ch.choices and ch.choices[0].delta.content:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text.append(ch.choices[0].delta.content)
                        chunks += 1
                    if ch.usage:
                        tokens = ch.usage.completion_tokens
                    if leaves and chunks >= 3:
                        stream.close()
                        break
            except openai.OpenAIError as e:
                ok = False
                text = [f"ERROR {e}"]
            results[i] = (ok, ttft, tokens, time.perf_counter() - t0, "".join(text), leaves)

    rss = []
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            rss.append(status_mb(pid, "VmRSS"))

    start_rss = status_mb(pid, "VmRSS")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    done.set()
    full = [r for r in results.values() if not r[5]]
    ttfts = sorted(r[1] for r in results.values() if r[1] is not None)
    return {"requests": len(results), "errors": sum(not r[0] for r in full), "wall_s": wall,
            "tokens_per_s": sum(r[2] for r in full) / wall, "ttft_median_s": statistics.median(ttfts),
            "ttft_p90_s": ttfts[int(0.9 * (len(ttfts) - 1))], "rss_start_mb": start_rss,
            "rss_end_mb": status_mb(pid, "VmRSS"), "rss_peak_mb": max([start_rss, *rss, status_mb(pid, "VmHWM")]),
            "answers": {i: r[4] for i, r in results.items() if not r[5]},
            "error_texts": sorted({r[4][:300] for r in full if not r[0]})}


def warm(url: str, model: str, prompt: str) -> None:
    openai.OpenAI(base_url=url + "/v1", api_key="none", timeout=900).chat.completions.create(
        model=model, max_tokens=8, messages=[{"role": "user", "content": prompt}])


def specdraft_rows(label: str, model: str, args: str, a, reqs, prompts, disconnect: bool) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, "-m", "specdraft", "serve", "--model", model, "--port", str(port),
           "--max-queue", str(max(64, a.clients * 4)), *shlex.split(args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, label)
        warm(url, model, prompts[0])
        r = load(url, model, a.clients, reqs, proc.pid)
        tau = next((float(x.split()[-1]) for x in httpx.get(url + "/metrics").text.splitlines()
                    if x.startswith("specdraft_tau ")), None)
        rows = [{"server": f"specdraft {label}", "command": f"specdraft serve --model {model} {args}", "tau": tau, **r}]
        if disconnect:
            d = load(url, model, a.clients, reqs, proc.pid, disconnect=True)
            rows.append({"server": f"specdraft {label}, half the clients leave", "command": rows[0]["command"],
                         "tau": None, **d})
        return rows
    finally:
        proc.terminate()
        proc.wait(60)


def llama_rows(spec: str, model: str, a, reqs, prompts) -> list[dict]:
    import torch

    from specdraft import fetch, zoo
    from specdraft.bench.llama_server import LlamaServer, find_server, server_args
    from specdraft.runtime.llamacpp import amx_repack_broken

    binary = find_server()
    if binary is None:
        print(f"llama-server is not built (make peers): skipping llamacpp-{spec}", file=sys.stderr)
        return []
    path = fetch.resolve(model, progress=False)
    draft = None
    kind = f"llamacpp-{spec}"
    if spec.startswith("draft:"):
        draft = zoo.gguf_file(fetch.resolve(spec.split(":", 1)[1], progress=False))
    args = server_args(zoo.gguf_file(path), kind, threads=torch.get_num_threads(), n_ctx=2048 * a.clients,
                       draft_gguf=draft, no_repack=amx_repack_broken(), parallel=a.clients)
    srv = LlamaServer(binary, args)
    try:
        warm(srv.url, model, prompts[0])
        r = load(srv.url, model, a.clients, reqs, srv.proc.pid)
        return [{"server": f"llama-server {spec}, -np {a.clients}", "command": "llama-server " + " ".join(args),
                 "tau": None, **r}]
    finally:
        srv.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--servers", default="batch 1=--max-batch 1;batch 8=--max-batch 8",
                    help="specdraft servers: LABEL=SERVE ARGS, separated by ';' (default: %(default)s)")
    ap.add_argument("--llama-server", default="plain", help="llama-server peers: plain, ngram, draft:MODEL "
                    "(comma-separated; empty: none; default: %(default)s)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--disconnect", action="store_true", help="run the last specdraft server again with half the "
                    "clients leaving mid-stream")
    ap.add_argument("--json", default=None, help="write the rows here too")
    a = ap.parse_args()
    prompts = [json.loads(line)["turns"][0] for line in (HERE / "prompts" / "mini.jsonl").read_text().splitlines()]
    reqs = requests_for(a.requests, prompts)
    servers = [s.split("=", 1) for s in a.servers.split(";") if s.strip()]
    rows = []
    for k, (label, args) in enumerate(servers):
        rows += specdraft_rows(label.strip(), a.model, args.strip(), a, reqs, prompts,
                               a.disconnect and k == len(servers) - 1)
    for spec in filter(None, a.llama_server.split(",")):
        rows += llama_rows(spec.strip(), a.model, a, reqs, prompts)
    ref = rows[0]["answers"]
    base = rows[0]["tokens_per_s"]
    print(f"\n{a.model}: {a.clients} concurrent streaming clients, {a.requests} requests of 64-128 tokens, greedy\n")
    print("| server | requests | errors | tokens/s | vs first row | TTFT median | TTFT p90 | RSS start / end / peak "
          "| tau | same answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        same = sum(r["answers"][i] == ref.get(i) for i in r["answers"])
        print(f"| {r['server']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / base:.2f}x | {r['ttft_median_s']:.2f} s | {r['ttft_p90_s']:.2f} s | "
              f"{r['rss_start_mb']:.0f} / {r['rss_end_mb']:.0f} / {r['rss_peak_mb']:.0f} MB | "
              f"{'' if r['tau'] is None else round(r['tau'], 2)} | {same}/{len(r['answers'])} |")
    print()
    for r in rows:
        print(f"- {r['server']}: `{r['command']}`")
        for e in r["error_texts"]:
            print(f"  - error: {e}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
