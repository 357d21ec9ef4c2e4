"""The cleaned corpus: what the clean stage writes and the tokenize stage reads.

    with ShardWriter(directory) as out:          # shard-00000.jsonl, ...: {"text": ...} per line
        out.write(text)
    write_source_info(directory, replacements, skipped)
    corpus = CleanedCorpus(directory, val_fraction)
    for piece in corpus.pieces():                # Piece(text, True, is_val), as Corpus.pieces gives

One JSON record per line, one document per record, in shards of about SHARD_BYTES: JSON keeps a
document's blank lines inside it (a .txt file would split it there), and tokenize streams the
shards line by line. source.json carries what the reader of the raw corpus counted (undecodable
bytes replaced, entries skipped) on to the token manifest.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Iterator

from tqdm.auto import tqdm

from pipeline.core.errors import PipelineError
from pipeline.data.corpus import Piece, is_val

SHARD_BYTES = 64_000_000
SHARD_GLOB = "shard-*.jsonl"
SOURCE_INFO = "source.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.jsonl"


class ShardWriter:
    """Documents appended to numbered shards of about SHARD_BYTES each."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.shards = 0
        self.documents = 0
        self._file: IO[str] | None = None
        self._bytes = 0

    def write(self, text: str, size: int) -> None:
        """Append one document of `size` UTF-8 bytes."""
        if self._file is None or self._bytes >= SHARD_BYTES:
            self._next_shard()
        self._file.write(json.dumps({"text": text}, ensure_ascii=False))
        self._file.write("\n")
        self._bytes += size
        self.documents += 1

    def _next_shard(self) -> None:
        self.close()
        self._file = open(self.directory / shard_name(self.shards), "w", encoding="utf-8")
        self.shards += 1
        self._bytes = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def write_source_info(directory: Path, replacements: int, skipped: dict[str, list[str]]) -> None:
    info = {"invalid_utf8_replacements": replacements, "skipped_entries": skipped}
    (Path(directory) / SOURCE_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")


class CleanedCorpus:
    """The clean stage's output, read as the tokenize stage reads a corpus: `pieces()`, `source`,
    `replacements` and `skipped`. Each record is one whole document (the clean stage cut the long
    ones), so its split is the hash of its text, as for a raw corpus."""

    def __init__(self, directory: str | Path, val_fraction: float):
        self.source = str(directory)
        self.val_fraction = val_fraction
        directory = Path(directory)
        self.shards = sorted(directory.glob(SHARD_GLOB))
        info_file = directory / SOURCE_INFO
        if not info_file.is_file():
            raise PipelineError(f"{directory} is not a cleaned corpus (no {SOURCE_INFO}): run the clean stage "
                                "first (python -m pipeline clean), or point paths.clean at its output")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        self.replacements: int = info["invalid_utf8_replacements"]
        self.skipped: dict[str, list[str]] = info["skipped_entries"]
        self.bytes = sum(shard.stat().st_size for shard in self.shards)

    def pieces(self, progress: str | None = None) -> Iterator[Piece]:
        """Every document with its split; `progress`: the label of a progress bar on stderr, shown on
        a terminal only."""
        with tqdm(total=self.bytes, unit="B", unit_scale=True, desc=progress, disable=None if progress else True,
                  file=sys.stderr, mininterval=1.0) as bar:
            for shard in self.shards:
                with open(shard, "rb") as fh:
                    for line in fh:
                        bar.update(len(line))
                        text = json.loads(line)["text"]
                        yield Piece(text, True, is_val(text, self.val_fraction))
