"""Benchmark of clean + tokenize on ~500 MB of real text with planted duplicates and boilerplate.

    .venv/bin/python bench/bench_clean.py corpus     # bench/out/clean-corpus/: ~500 MB of jsonl shards
    .venv/bin/python bench/bench_clean.py run        # python -m pipeline clean, then tokenize, measured
    .venv/bin/python bench/bench_clean.py run --set clean.quality=false   # the same with params overridden

The text is bench_tokenize.py's (translation catalogs in ~100 languages, man pages, package docs,
Python sources, in a fixed order), cut at blank lines into web-page-sized documents of about
PAGE_CHARS characters, with what a crawl adds planted at fixed strides: an exact copy of a recent
page (1 in 20), a near copy with one word changed (1 in 20), a cookie banner line (1 in 10). Each
stage runs as a fresh child process with params.yaml as shipped (every clean rule on, languages:
keep all) and is measured as bench_tokenize.py measures: wall, CPU seconds, peak RSS.
Results go to bench/out/clean-results.json. Heavy: run it by hand, never in CI.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

from bench_tokenize import OUT, _documents, measure

CORPUS = OUT / "clean-corpus"
RUN = OUT / "clean-run"
TARGET_BYTES = 500_000_000
SHARD_BYTES = 50_000_000
PAGE_CHARS = 4000
COOKIE = "This site uses cookies. By continuing to browse you agree to our use of cookies. Accept"


def pages():
    """Documents of about PAGE_CHARS characters, cut at blank lines."""
    for text in _documents():
        page, size = [], 0
        for paragraph in text.split("\n\n"):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            page.append(paragraph)
            size += len(paragraph)
            if size >= PAGE_CHARS:
                yield "\n\n".join(page)
                page, size = [], 0
        if page:
            yield "\n\n".join(page)


def planted():
    """The pages, with copies, near copies and banners planted at fixed strides."""
    recent: deque[str] = deque(maxlen=500)
    for i, page in enumerate(pages()):
        if i % 10 == 3:
            page += "\n" + COOKIE
        yield page
        recent.append(page)
        if i % 20 == 5:
            yield recent[0]                                   # an exact copy
        if i % 20 == 15:
            words = recent[len(recent) // 2].split(" ")
            words[len(words) // 2] = "changed"
            yield " ".join(words)                             # a near copy


def build_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for old in CORPUS.glob("*.jsonl"):
        old.unlink()
    total, shard, size, out = 0, 0, 0, None
    for page in planted():
        if out is None or size >= SHARD_BYTES:
            if out:
                out.close()
            out = open(CORPUS / f"crawl-{shard:03d}.jsonl", "w", encoding="utf-8")
            shard, size = shard + 1, 0
        line = json.dumps({"text": page}, ensure_ascii=False) + "\n"
        out.write(line)
        written = len(line.encode("utf-8"))
        size, total = size + written, total + written
        if total >= TARGET_BYTES:
            break
    out.close()
    print(f"corpus: {shard} shards, {total / 1e6:.0f} MB -> {CORPUS}")


def run(overrides: list[str]) -> dict:
    sets = [item for value in overrides for item in ("--set", value)] + ["--set", f"paths.corpus={CORPUS}", "--set", f"paths.clean={RUN / 'clean'}",
            "--set", f"paths.reports={RUN / 'reports'}", "--set", f"paths.tokenizer={RUN / 'tokenizer'}",
            "--set", f"paths.tokens={RUN / 'tokens'}"]
    results = {"overrides": overrides}
    for stage in ("clean", "tokenize"):
        cmd = [sys.executable, "-m", "pipeline", stage, "--params", "params.yaml", *sets]
        results[stage] = measure(cmd, OUT / f"clean-run-{stage}.log")
        results[stage]["summary"] = (OUT / f"clean-run-{stage}.log").read_text().strip().splitlines()[-1]
        print(f"{stage}: {results[stage]}", flush=True)
    report = json.loads((RUN / "reports" / "clean.json").read_text())
    manifest = json.loads((RUN / "tokens" / "manifest.json").read_text())
    results["clean_report"] = {key: report[key] for key in ("documents_in", "documents_out", "bytes_in", "bytes_out",
                                                            "dropped", "boilerplate_lines_removed")}
    results["tokens"] = manifest["train_tokens"] + manifest["val_tokens"]
    results["total"] = {"wall_s": round(results["clean"]["wall_s"] + results["tokenize"]["wall_s"], 1),
                        "cpu_s": round(results["clean"]["cpu_s"] + results["tokenize"]["cpu_s"], 1),
                        "peak_rss_mb": max(results["clean"]["peak_rss_mb"], results["tokenize"]["peak_rss_mb"])}
    print(f"total: {results['total']}, {results['tokens']:,} tokens after cleaning", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["corpus", "run"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.what == "corpus":
        return build_corpus()
    results_file = OUT / "clean-results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    results[" ".join(args.set) or "params.yaml"] = run(args.set)
    results_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
