"""Benchmark of the tokenize stage against the run_clm.py way, on >= 100M tokens of real text.

    .venv/bin/python bench/bench_tokenize.py corpus      # assemble bench/out/corpus/ (~10 s, ~400 MB)
    .venv/bin/python bench/bench_tokenize.py stage       # our stage on 25%/50%/100% of it (minutes)
    .venv/bin/python bench/bench_tokenize.py hf          # datasets.map + group_texts on 100%, same tokenizer
    .venv/bin/python bench/bench_tokenize.py all         # the three in order

Every measured run is a fresh child process: wall time and peak RSS (the child's own high-water
mark from wait4, and the sampled sum over its process tree, which counts datasets' workers).
Results go to bench/out/results.json and are printed as the table in bench/README.md.
Heavy: run it by hand on an otherwise idle machine, never in CI.
"""
from __future__ import annotations

import argparse
import gettext
import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CORPUS = OUT / "corpus"
SHARD_BYTES = 8_000_000
FULL_BYTES = 420_000_000      # ~3.2-4 bytes/token at vocab 32k: comfortably over 100M tokens
# subset name -> which shards (index % 4) it takes: strided, so each subset mixes every source
SUBSETS = {"25": {0}, "50": {0, 2}, "100": {0, 1, 2, 3}}
PASS_THROUGH = ["clean.exact_dedup=false", "clean.boilerplate=false", "clean.near_dedup=false", "clean.quality=false"]


# --- the corpus ----------------------------------------------------------------------------------

def _documents():
    """Real text found on a Debian machine, in a fixed order: translation catalogs (many
    languages), man pages, package docs, then Python sources."""
    for mo in sorted(Path("/usr/share/locale").rglob("*.mo")):
        try:
            with open(mo, "rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog
        except (OSError, UnicodeDecodeError, ValueError, IndexError):   # a few catalogs have odd headers
            continue
        text = "\n".join(str(v) for k, v in sorted(catalog.items(), key=lambda kv: str(kv[0])) if k)
        if text.strip():
            yield text
    for page in sorted(Path("/usr/share/man").rglob("*.gz")):
        yield _text(page)
    for doc in sorted(Path("/usr/share/doc").rglob("*")):
        if doc.is_file() and not doc.is_symlink():
            yield _text(doc)
    for base in (Path("/usr/lib/python3.11"), ROOT / ".venv" / "lib" / "python3.11" / "site-packages"):
        for source in sorted(base.rglob("*.py")):
            yield _text(source)


def _text(path: Path) -> str:
    """The file's text ('' for binaries: images and PDFs among the docs are no text)."""
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError):
        return ""
    return "" if b"\0" in data[:8192] else data.decode("utf-8", "replace")


def build_corpus() -> None:
    """bench/out/corpus/shard-NNN.txt, then corpus-25/50/100/: a quarter, half and all of the
    shards, as symlinks."""
    started = time.perf_counter()
    CORPUS.mkdir(parents=True, exist_ok=True)
    shard, size, total, buf = 0, 0, 0, []
    for text in _documents():
        data = text.strip().encode("utf-8", "replace")
        if not data:
            continue
        buf.append(data)
        size += len(data) + 2
        if size >= SHARD_BYTES:
            (CORPUS / f"shard-{shard:03d}.txt").write_bytes(b"\n\n".join(buf) + b"\n")
            shard, total, size, buf = shard + 1, total + size, 0, []
            if total >= FULL_BYTES:
                break
    for name, residues in SUBSETS.items():
        subset = OUT / f"corpus-{name}"
        subset.mkdir(exist_ok=True)
        for link in subset.iterdir():
            link.unlink()
        for i in range(shard):
            if i % 4 in residues:
                (subset / f"shard-{i:03d}.txt").symlink_to(CORPUS / f"shard-{i:03d}.txt")
    print(f"corpus: {shard} shards, {total / 1e6:.0f} MB in {time.perf_counter() - started:.0f} s -> {CORPUS}")


# --- measuring a child process -------------------------------------------------------------------

def measure(cmd: list[str], log: Path) -> dict:
    """Run cmd: wall and CPU seconds, its own peak RSS (wait4), the peak RSS summed over its tree."""
    tree_peak = 0
    done = threading.Event()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

        def sample():
            nonlocal tree_peak
            parent = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    procs = [parent, *parent.children(recursive=True)]
                    tree_peak = max(tree_peak, sum(p.memory_info().rss for p in procs))
                except psutil.Error:
                    pass
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): see {log}")
    # CPU seconds (its own and its waited-for children's) depend far less than wall time on
    # what else the shared machine runs
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "tree_peak_rss_mb": round(tree_peak / 2**20)}


def run_stage() -> dict:
    results = {}
    for name in SUBSETS:
        run = OUT / f"stage-{name}"
        sets = [f"paths.corpus={OUT / f'corpus-{name}'}", f"paths.clean={run / 'clean'}",
                f"paths.reports={run / 'reports'}", f"paths.tokenizer={run / 'tokenizer'}", f"paths.tokens={run / 'tokens'}",
                *PASS_THROUGH]
        sets = [item for value in sets for item in ("--set", value)]
        # tokenize reads the clean stage's output: cleaned with every rule off, the text as it is
        measure([sys.executable, "-m", "pipeline", "clean", "--params", "params.yaml", *sets], OUT / f"clean-{name}.log")
        cmd = [sys.executable, "-m", "pipeline", "tokenize", "--params", "params.yaml", *sets]
        result = measure(cmd, OUT / f"stage-{name}.log")
        manifest = json.loads((run / "tokens" / "manifest.json").read_text())
        result |= {"tokens": manifest["train_tokens"] + manifest["val_tokens"],
                   "bytes": manifest["train_bytes"] + manifest["val_bytes"],
                   "bytes_per_token": manifest["bytes_per_token"],
                   "summary": (OUT / f"stage-{name}.log").read_text().strip().splitlines()[-1]}
        results[name] = result
        print(f"stage {name}%: {result}", flush=True)
    return results


def run_hf() -> dict:
    """The run_clm.py way on the full corpus with the tokenizer our stage trained on it."""
    cache = OUT / "hf-cache"
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    result = measure([sys.executable, __file__, "hf-child", str(cache)], OUT / "hf.log")
    result |= json.loads((OUT / "hf.log").read_text().strip().splitlines()[-1])
    result["cache_mb"] = round(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6)
    print(f"hf: {result}", flush=True)
    return result


def hf_child(cache: Path) -> None:
    """As examples/pytorch/language-modeling/run_clm.py does it (text loader, keep_linebreaks,
    tokenize map, group_texts map, block 1024, preprocessing_num_workers 2)."""
    from itertools import chain

    from datasets import load_dataset
    from transformers import AutoTokenizer

    block_size = 1024
    times = {}
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(OUT / "stage-100" / "tokenizer"))
    files = sorted(str(p) for p in (OUT / "corpus-100").iterdir())
    raw = load_dataset("text", data_files={"train": files}, keep_linebreaks=True, cache_dir=str(cache))
    times["load_s"] = round(time.perf_counter() - started, 1)

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, num_proc=2, remove_columns=["text"])
    times["tokenize_map_s"] = round(time.perf_counter() - started - times["load_s"], 1)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = (len(concatenated["input_ids"]) // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group_texts, batched=True, num_proc=2)
    times["group_map_s"] = round(time.perf_counter() - started - times["load_s"] - times["tokenize_map_s"], 1)
    import pyarrow.compute as pc

    produced = pc.sum(pc.list_value_length(tokenized["train"].data.column("input_ids"))).as_py()
    print(json.dumps({"tokens": len(grouped["train"]) * block_size, "tokens_before_grouping": produced, **times}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["corpus", "stage", "hf", "all", "hf-child"])
    parser.add_argument("cache", nargs="?")
    args = parser.parse_args()
    if args.what == "hf-child":
        return hf_child(Path(args.cache))
    OUT.mkdir(parents=True, exist_ok=True)
    results_file = OUT / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if args.what in ("corpus", "all"):
        build_corpus()
    if args.what in ("stage", "all"):
        results["stage"] = run_stage()
    if args.what in ("hf", "all"):
        results["hf"] = run_hf()
    results_file.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
