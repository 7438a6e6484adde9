"""Bench outputs: summary.json, FastChat-style answers per method, report.md, speedup.png."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..paths import atomic_file
from .metrics import TurnRecord


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown_table(summary: dict) -> str:
    routed = any("routing_accuracy" in s["overall"] for s in summary["methods"].values())
    rows = ["| method | category | questions | tau | acceptance | tokens/s | speedup | same output as plain |"
            + (" routing accuracy |" if routed else ""),
            "|---|---|---|---|---|---|---|---|" + ("---|" if routed else "")]
    for method, s in summary["methods"].items():
        for cat, st in [*s["categories"].items(), ("**overall**", s["overall"])]:
            rows.append(f"| {method} | {cat} | {st['questions']} | {fmt(st['tau'])} | {fmt(st['acceptance_rate'])} | "
                        f"{fmt(st['tokens_per_s'], '.1f')} | {fmt(st['speedup'])}x | {fmt(st['greedy_match'])} |"
                        + (f" {fmt(st.get('routing_accuracy'))} |" if routed else ""))
    return "\n".join(rows)


def decoding(summary: dict) -> str:
    """How the run decoded: "greedy", or the sampling parameters (outputs then differ from plain's)."""
    sp = summary.get("sampling")
    if not sp:
        return "greedy"
    return (f"sampled (temperature {sp['temperature']:g}, top-p {sp['top_p']:g}, top-k {sp['top_k']}, seed {sp['seed']}; "
            "outputs are not compared with plain's: a drafter draws random numbers of its own, only the "
            "distribution is the same)")


def write_answers(records: list[TurnRecord], out: Path) -> None:
    """answers/METHOD.jsonl in FastChat's answer format (repeat 0; one line per question)."""
    by: dict[tuple[str, str], list[TurnRecord]] = {}
    for r in records:
        if r.repeat == 0:
            by.setdefault((r.method, r.question_id), []).append(r)
    files: dict[str, list[str]] = {}
    for (method, qid), turns in by.items():
        turns.sort(key=lambda r: r.turn)
        files.setdefault(method, []).append(json.dumps({
            "question_id": qid, "answer_id": f"{method}-{qid}", "model_id": method, "tstamp": time.time(),
            "choices": [{"index": 0, "turns": [t.text for t in turns], "new_tokens": [t.new_tokens for t in turns],
                         "wall_time": [t.wall_s for t in turns], "target_forwards": [t.target_forwards for t in turns],
                         "accepted": [t.accepted for t in turns], "drafted": [t.drafted for t in turns]}],
        }))
    for method, lines in files.items():
        safe = method.replace("/", "_").replace(":", "_")
        with atomic_file(out / "answers" / f"{safe}.jsonl", "w") as f:
            f.write("\n".join(lines) + "\n")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in summary["methods"] if m != "plain"] or list(summary["methods"])
    cats = sorted({c for m in methods for c in summary["methods"][m]["categories"]}) + ["overall"]

    def get(m, c, key):
        s = summary["methods"][m]
        v = (s["overall"] if c == "overall" else s["categories"].get(c, {})).get(key)
        return v or 0.0

    fig, axes = plt.subplots(2, 1, figsize=(min(16, max(7, 0.7 * len(cats) * len(methods))), 7), sharex=True)
    width = 0.8 / len(methods)
    for ax, key, label in ((axes[0], "speedup", "speedup vs plain (x)"), (axes[1], "tau", "tau (tokens / target forward)")):
        for i, m in enumerate(methods):
            xs = [j + i * width - 0.4 + width / 2 for j in range(len(cats))]
            ax.bar(xs, [get(m, c, key) for c in cats], width, label=m)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel(label)
    axes[1].set_xticks(range(len(cats)), cats, rotation=20)
    axes[0].legend(fontsize=8)
    sp = summary.get("sampling")
    axes[0].set_title(f"{summary['model']} ({summary['dtype']}" + (f", temperature {sp['temperature']:g})" if sp else ")"))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_all(summary: dict, records: list[TurnRecord], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    write_answers(records, out)
    with atomic_file(out / "report.md", "w") as f:
        f.write(f"# specdraft bench: {summary['model']} ({summary['dtype']})\n\n`{command}`\n\n"
                f"{summary['date']}, max {summary['max_new_tokens']} new tokens, {summary['repeats']} repeat(s), "
                f"{decoding(summary)}. speedup = mean over questions of tokens/s ratio to plain (same run).\n\n"
                f"{markdown_table(summary)}\n")
        for method, why in summary.get("failures", {}).items():
            f.write(f"\n- **{method} failed** and was dropped from the run: {why}\n")
    plot(summary, out / "speedup.png")
