"""The clean stage: raw corpus -> cleaned corpus (jsonl shards) + reports/clean.md + reports/clean.json.

    python -m pipeline clean --params params.yaml [--params params/demo.yaml]

Duplicates (exact, boilerplate lines, near), other languages and junk removed before tokenize
(pipeline/data/cleaning.py); every drop counted by its rule, with examples. The cleaned corpus and
both reports appear together, or not at all.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.core.atomic import staging_dir, write_text
from pipeline.core.params import Params
from pipeline.data.cleaning import CleanReport, clean as clean_corpus, render
from pipeline.data.corpus import Corpus


def run(params: Params, *, corpus: Path, clean: Path, clean_md: Path, clean_metrics: Path) -> CleanReport:
    source = Corpus(corpus, params.data)
    settings = params.clean
    with staging_dir(Path(clean)) as stage:
        report, examples = clean_corpus(source, settings, stage)
        report.write(clean_metrics)
        write_text(clean_md, render(report, examples, settings))
    dropped = report.documents_in - report.documents_out
    print(f"clean: {corpus}: {report.documents_in:,} documents ({report.bytes_in / 1e6:,.1f} MB) -> "
          f"{report.documents_out:,} kept ({report.bytes_out / 1e6:,.1f} MB, ~{report.tokens_estimate_out / 1e6:,.1f}M "
          f"tokens), {dropped:,} dropped: "
          + (", ".join(f"{rule} {c.documents:,}" for rule, c in report.dropped.items()) or "none")
          + f"; {report.seconds:.1f} s, peak RSS {report.peak_rss_mb:,.0f} MB; reports in {clean_md}")
    return report
