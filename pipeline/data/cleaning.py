"""Cleaning the raw corpus before tokenize: duplicates, other languages and junk out, every drop
counted by the rule that made it, with examples.

    report = clean(Corpus(paths.corpus, params.data), params.clean, directory)   # CleanReport

Two streaming passes. The first (when clean.boilerplate is on) finds exact duplicates and counts,
for each line, the distinct documents that hold it (pipeline/data/dedup.py); the second takes each
document through the rules in this order and writes what survives (pipeline/data/cleaned.py):

  exact_duplicate   equal to an earlier document up to case and spacing (clean.exact_dedup)
  boilerplate       nothing left once lines held by many documents are removed (clean.boilerplate)
  language          not one of clean.languages (lingua, pipeline/data/langid.py)
  (quality rules)   fails a Gopher / C4 / FineWeb heuristic (clean.quality, pipeline/data/quality.py)
  near_duplicate    estimated Jaccard >= clean.near_dedup_threshold with a kept document (MinHash LSH)

Language before quality: the thresholds are one language's, and a Russian page is better
explained as Russian than as short of Azerbaijani stop words. Near duplicates last, over the text
that is kept, so that two pages that differ only in their boilerplate are compared without it.
Memory: the line keys of the first pass (16 bytes a line) and one MinHash signature per kept
document (~0.6 KB); the text itself streams.

A document longer than data.max_document_chars is cleaned, and written, as its pieces.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rensa import RMinHash

from tqdm.auto import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.params import Clean
from pipeline.core.record import Record
from pipeline.data import quality
from pipeline.data.cleaned import ShardWriter, write_source_info
from pipeline.data.corpus import Corpus, utf8_len
from pipeline.data.dedup import LineCounter, NearDuplicates, exact_key, line_keys, strip_lines
from pipeline.data.langid import LanguageId, check_codes

# The estimate of tokens per byte the report prices drops with: tokenize's 32k BPE measured 2.99
# bytes/token on the bench corpus (bench/README.md); the token files give the exact count later.
BYTES_PER_TOKEN = 3.0
WORKER_BATCH = 500             # documents per task of a worker process (and per language ID call)
MAX_WORKERS = 8                # processes for the per-document rules: one per core, up to this
LANGUAGE_SAMPLE_EVERY = 50     # with clean.languages empty, the language mix is read off every 50th document
EXAMPLE_CHARS = 300
# The key that relaxes each rule: named when a rule leaves nothing.
RELAX = {"exact_duplicate": "clean.exact_dedup", "boilerplate": "clean.boilerplate_min_documents",
         "language": "clean.languages", "near_duplicate": "clean.near_dedup_threshold"}
RULES = ("exact_duplicate", "boilerplate", "language", *quality.RULES, "near_duplicate")


class RuleCount(Record):
    FORMAT = 1
    WRITTEN_BY = "clean"

    documents: int
    bytes: int
    tokens_estimate: int


class CleanReport(Record):
    """reports/clean.json: what the clean stage kept and dropped, by rule (numbers DVC shows as metrics)."""

    FORMAT = 1
    WRITTEN_BY = "clean"

    documents_in: int
    documents_out: int
    bytes_in: int
    bytes_out: int
    tokens_estimate_out: int
    dropped: dict[str, RuleCount]
    boilerplate_lines_removed: int
    boilerplate_bytes_removed: int
    languages_before: dict[str, float]       # share of documents, from a sample or every document
    languages_after: dict[str, float]
    language_documents_classified: int
    seconds: float
    peak_rss_mb: float


@dataclass
class _Tally:
    """What the passes count; examples stay out of the metrics file (they go to clean.md)."""

    documents_in: int = 0
    bytes_in: int = 0
    documents_out: int = 0
    bytes_out: int = 0
    dropped: dict[str, list[int]] = field(default_factory=dict)      # rule -> [documents, bytes]
    examples: dict[str, list[str]] = field(default_factory=dict)
    lines_removed: int = 0
    line_bytes_removed: int = 0
    languages_before: dict[str, int] = field(default_factory=dict)
    languages_after: dict[str, int] = field(default_factory=dict)

    def drop(self, rule: str, text: str, size: int, limit: int, note: str = "") -> None:
        counts = self.dropped.setdefault(rule, [0, 0])
        counts[0] += 1
        counts[1] += size
        examples = self.examples.setdefault(rule, [])
        if len(examples) < limit:
            examples.append(note + _excerpt(text))


@dataclass
class _Document:
    index: int
    text: str                    # as read
    size: int                    # its UTF-8 bytes
    kept: str                    # without boilerplate lines
    removed: list[str]           # the boilerplate lines removed
    key: int                     # exact_key(kept)
    rule: str | None             # the quality rule it fails
    signature: RMinHash | None   # for near duplicates
    language: str | None = None


def clean(corpus: Corpus, settings: Clean, directory: Path) -> tuple[CleanReport, dict[str, list[str]]]:
    """Clean `corpus` into `directory` (an empty staging directory): the report, and examples by rule."""
    check_codes(settings.languages)
    started = time.perf_counter()
    tally = _Tally()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(MAX_WORKERS, cores)
    first_copies, boilerplate = _first_pass(corpus, settings, workers) if settings.boilerplate else (None, {})
    _second_pass(corpus, settings, directory, tally, workers, first_copies, boilerplate)
    write_source_info(directory, corpus.replacements, {kind: paths for kind, paths in corpus.skipped.items() if paths})
    report = _report(tally, time.perf_counter() - started)
    if not tally.documents_out:
        raise _nothing_left(corpus.source, report)
    return report, tally.examples


def _texts(corpus: Corpus, label: str) -> Iterator[tuple[int, str]]:
    """(index, text) of every non-empty document piece, with a progress bar over the corpus bytes."""
    # on a terminal only (disable=None): a log or a captured stderr keeps its one-line errors
    with tqdm(total=corpus.size_bytes() or None, unit="B", unit_scale=True, desc=label, file=sys.stderr,
              mininterval=1.0, disable=None) as bar:
        index = 0
        for text in corpus.texts():
            bar.update(utf8_len(text))
            if text.strip():
                yield index, text
                index += 1


def _first_pass(corpus: Corpus, settings: Clean, workers: int) -> tuple[bytearray, dict[int, int]]:
    """Which documents copy an earlier one exactly, and the boilerplate lines of the others."""
    seen: set[int] = set()
    copies = bytearray()
    lines = LineCounter()
    for batch, keys in _in_workers(_keys, _batched(_texts(corpus, "clean: pass 1/2 (lines)")), workers):
        for (index, _), (key, line_keys) in zip(batch, keys):
            copy = settings.exact_dedup and key in seen
            copies.append(copy)
            if not copy:
                seen.add(key)
                lines.add(index, line_keys)
    return copies, lines.boilerplate(settings.boilerplate_min_documents)


def _second_pass(corpus: Corpus, settings: Clean, directory: Path, tally: _Tally, workers: int,
                 first_copies: bytearray | None, boilerplate: dict[int, int]) -> None:
    detect = LanguageId(settings.languages)
    near = NearDuplicates(settings.near_dedup_threshold) if settings.near_dedup else None
    seen: set[int] = set()
    label = "clean: pass 2/2 (rules)" if settings.boilerplate else "clean"
    # what the workers read, inherited when the pool forks (never pickled)
    _WORKER.update(settings=settings, boilerplate=boilerplate, copies=first_copies,
                   limits=quality.THRESHOLDS[settings.quality_language])
    with ShardWriter(directory) as out:
        for batch, prepared in _in_workers(_prepare, _batched(_texts(corpus, label)), workers):
            survivors = []
            for (index, text), done in zip(batch, prepared):
                size = utf8_len(text)
                tally.documents_in += 1
                tally.bytes_in += size
                if done is None:   # a copy the first pass found
                    tally.drop("exact_duplicate", text, size, settings.examples)
                    continue
                document = _Document(index, text, size, *done)
                if _survives_dedup(document, settings, tally, seen):
                    survivors.append(document)
            _judge(survivors, settings, detect, near, tally, out)


# --- the work done in worker processes: one function per pass, on a batch of documents -------------

_WORKER: dict[str, Any] = {}


def _keys(batch: list[tuple[int, str]]) -> list[tuple[int, list[int]]]:
    return [(exact_key(text), line_keys(text)) for _, text in batch]


def _prepare(batch: list[tuple[int, str]]) -> list[tuple[str, list[str], int, str | None, RMinHash | None] | None]:
    """Per document: its text without boilerplate lines, the lines removed, its exact key, the
    quality rule it fails and its MinHash signature (the rules that need no other document); None
    for a copy the first pass found."""
    settings, limits, copies = _WORKER["settings"], _WORKER["limits"], _WORKER["copies"]
    out = []
    for index, text in batch:
        if copies is not None and copies[index]:
            out.append(None)
            continue
        kept, removed = strip_lines(index, text, _WORKER["boilerplate"])
        rule = quality.failing_rule(kept, limits) if settings.quality and kept else None
        signature = NearDuplicates.signature(kept) if settings.near_dedup and kept and not rule else None
        out.append((kept, removed, exact_key(kept), rule, signature))
    return out


def _batched(items: Iterator[tuple[int, str]]) -> Iterator[list[tuple[int, str]]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= WORKER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _in_workers(work: Callable[[list], list], batches: Iterator[list], workers: int) -> Iterator[tuple[list, list]]:
    """(batch, work(batch)) in order, from `workers` forked processes, with at most two batches per
    worker in flight: the corpus streams through (Pool.imap would read all of it ahead)."""
    if workers == 1:
        yield from ((batch, work(batch)) for batch in batches)
        return
    # a Ctrl-C reaches the whole process group: the workers leave it to this process, which stops them
    with multiprocessing.get_context("fork").Pool(workers, initializer=signal.signal,
                                                  initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(work, (batch,))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


def _survives_dedup(document: _Document, settings: Clean, tally: _Tally, seen: set[int]) -> bool:
    limit = settings.examples
    if document.removed:
        tally.lines_removed += len(document.removed)
        tally.line_bytes_removed += sum(utf8_len(line) + 1 for line in document.removed)
        examples = tally.examples.setdefault("boilerplate lines", [])
        examples += [_excerpt(line) for line in document.removed[:limit - len(examples)]]
    if not document.kept:
        tally.drop("boilerplate", document.text, document.size, limit)
        return False
    if settings.exact_dedup:
        if document.key in seen:
            tally.drop("exact_duplicate", document.text, document.size, limit)
            return False
        seen.add(document.key)
    return True


def _judge(batch: list[_Document], settings: Clean, detect: LanguageId, near: NearDuplicates | None,
           tally: _Tally, out: ShardWriter) -> None:
    """Language, quality and near duplicates for a batch, in order; the survivors written."""
    classified = batch if settings.languages else [d for d in batch if d.index % LANGUAGE_SAMPLE_EVERY == 0]
    for document, language in zip(classified, detect([d.kept for d in classified]) if classified else []):
        document.language = language or "unknown"
        tally.languages_before[document.language] = tally.languages_before.get(document.language, 0) + 1
    limit = settings.examples
    for document in batch:
        text, size = document.kept, document.size
        if settings.languages and document.language not in settings.languages:
            tally.drop("language", text, size, limit, f"[{document.language}] ")
            continue
        if document.rule:
            tally.drop(document.rule, text, size, limit)
            continue
        if near is not None:
            copied = near.match(document.index, document.signature)
            if copied is not None:
                tally.drop("near_duplicate", text, size, limit, f"[near-duplicate of document {copied}] ")
                continue
        out.write(text, utf8_len(text))
        tally.documents_out += 1
        tally.bytes_out += utf8_len(text)
        if document.language is not None:
            tally.languages_after[document.language] = tally.languages_after.get(document.language, 0) + 1


def _report(tally: _Tally, seconds: float) -> CleanReport:
    dropped = {rule: RuleCount.make(documents=docs, bytes=size, tokens_estimate=round(size / BYTES_PER_TOKEN))
               for rule in RULES if rule in tally.dropped for docs, size in [tally.dropped[rule]]}
    return CleanReport.make(
        documents_in=tally.documents_in, documents_out=tally.documents_out,
        bytes_in=tally.bytes_in, bytes_out=tally.bytes_out,
        tokens_estimate_out=round(tally.bytes_out / BYTES_PER_TOKEN),
        dropped=dropped,
        boilerplate_lines_removed=tally.lines_removed, boilerplate_bytes_removed=tally.line_bytes_removed,
        languages_before=_shares(tally.languages_before), languages_after=_shares(tally.languages_after),
        language_documents_classified=sum(tally.languages_before.values()),
        seconds=round(seconds, 1),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))


def _shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {code: round(n / total, 4) for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _nothing_left(source: str, report: CleanReport) -> PipelineError:
    if not report.documents_in:
        return PipelineError(f"corpus {source} holds no text (every file is empty or blank): add documents "
                             "or point paths.corpus elsewhere")
    worst, counts = max(report.dropped.items(), key=lambda kv: kv[1].documents)
    key = RELAX.get(worst, "clean.quality (false) or clean.quality_language")   # a quality rule
    return PipelineError(f"clean: every one of the {report.documents_in:,} documents of {source} was dropped, "
                         f"{counts.documents:,} by {worst}: relax {key}, or check paths.corpus")


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[:EXAMPLE_CHARS] + " …"


def render(report: CleanReport, examples: dict[str, list[str]], settings: Clean) -> str:
    """reports/clean.md: the table of drops by rule, the language mix, examples of each rule."""
    mb = 1e6
    lines = ["# What the clean stage removed", "",
             f"{report.documents_in:,} documents ({report.bytes_in / mb:,.1f} MB, ~{report.bytes_in / BYTES_PER_TOKEN / mb:,.1f}M "
             f"tokens) in; **{report.documents_out:,} kept** ({report.bytes_out / mb:,.1f} MB, "
             f"~{report.tokens_estimate_out / mb:,.1f}M tokens: what the estimate stage prices, once tokenized). "
             f"Tokens are estimated at {BYTES_PER_TOKEN:g} bytes/token; the token files hold the exact count.", "",
             "| rule | documents | MB | ~tokens | share of bytes in |", "| --- | ---: | ---: | ---: | ---: |"]
    for rule, counts in report.dropped.items():
        label = f"{rule} (quality)" if rule in quality.RULES else rule
        lines.append(f"| {label} | {counts.documents:,} | {counts.bytes / mb:,.2f} | {counts.tokens_estimate:,} | "
                     f"{counts.bytes / max(1, report.bytes_in):.1%} |")
    lines += ["", f"Boilerplate lines removed from documents that were kept or judged further: "
              f"{report.boilerplate_lines_removed:,} ({report.boilerplate_bytes_removed / mb:,.2f} MB).", "",
              "## Languages", "", _language_note(report, settings), "", "| language | before | after |",
              "| --- | ---: | ---: |"]
    for code in report.languages_before:
        lines.append(f"| {code} | {report.languages_before[code]:.1%} | {report.languages_after.get(code, 0):.1%} |")
    lines += ["", "## Examples", ""]
    for rule in [*report.dropped, "boilerplate lines"]:
        if examples.get(rule):
            lines += [f"**{rule}**", ""] + [f"- {example}" for example in examples[rule]] + [""]
    lines += ["## Settings", "", "```", *(f"clean.{key}: {value}" for key, value in settings.model_dump().items()), "```", ""]
    return "\n".join(lines)


def _language_note(report: CleanReport, settings: Clean) -> str:
    scope = (f"every document that reached the language rule ({report.language_documents_classified:,})"
             if settings.languages else
             f"a sample of every {LANGUAGE_SAMPLE_EVERY}th document ({report.language_documents_classified:,}; "
             "clean.languages is empty, so nothing is dropped by language)")
    return (f"Shares of documents by language (lingua, offline, low-accuracy mode on each document's first "
            f"characters), over {scope}; 'before' is after the duplicate rules, 'after' is what was kept.")
