"""The data builder's pure parts, and (integration) the built suite itself."""

import json

import pytest

from specdraft.data import sources
from specdraft.data.build import DOMAINS, build


def test_truncated_json_array_is_read_up_to_the_cut():
    text = '[{"a": 1}, {"a": 2},\n {"a": 3}, {"a": [4, 5'
    assert [o["a"] for o in sources.iter_json_array(text)] == [1, 2, 3]
    assert [o["a"] for o in sources.iter_json_array('[{"a": 1}]')] == [1]
    assert list(sources.iter_json_array("[]")) == []


def test_man_page_description_is_plain_text():
    raw = "\n".join([
        '.\\" comment', ".TH LS 1", ".SH NAME", "ls \\- list", ".SH DESCRIPTION",
        "List information about the \\fBFILE\\fRs.", ".PP", ".B \\-a", "do not ignore entries", ".SH AUTHOR", "x",
    ])
    assert sources._man_description(raw) == "List information about the FILEs. -a do not ignore entries"


@pytest.mark.integration
def test_built_suite(tmp_path):
    out = build(tmp_path / "data", per_domain=12, pool_size=40, progress=False)
    qs = [json.loads(line) for line in (out / "questions.jsonl").read_text().splitlines()]
    assert {q["category"] for q in qs} == set(DOMAINS) and len(qs) == 12 * len(DOMAINS)
    assert all(len(q["turns"]) == 2 for q in qs if q["category"] == "conversation")  # MT-bench, both turns
    bench_ids = {q["question_id"] for q in qs}
    for d in DOMAINS:
        pool = [json.loads(line) for line in (out / "pool" / f"{d}.jsonl").read_text().splitlines()]
        assert len(pool) == 40 and not bench_ids & {p["question_id"] for p in pool}  # disjoint
        if d != "conversation":
            # no fixed template per domain: the prompts do not all start (or end) the same way
            firsts = {p["turns"][0][:12] for p in pool}
            lasts = {p["turns"][0][-12:] for p in pool}
            assert len(firsts) > 3 and len(lasts) > 3, d
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["domains"]["math"] == {"bench": 12, "pool": 40}
