"""Duplicates at three grains: whole documents, lines across documents, near-identical documents.

    exact_key(text)                                   # equal for texts equal up to case and spacing
    lines = LineCounter(); lines.add(index, line_keys(text))   # first pass: which documents hold each line
    boilerplate = lines.boilerplate(min_documents)    # {line key: the first document holding it}
    text, removed = strip_lines(index, text, boilerplate)
    near = NearDuplicates(threshold); near.match(text) -> the kept document it copies, or None

Boilerplate, after CCNet (Wenzek et al. 2020, arXiv:1911.00359, section 3.1): a line (stripped,
lowercased) held by at least `min_documents` documents is navigation, a cookie banner or a
footer, and is removed from every document but the first that holds it. CCNet removes every
copy; keeping the first keeps a re-posted article's text once where CCNet would lose it whole.

Near duplicates: MinHash over word 5-gram shingles (FineWeb's and datatrove's n-gram size) with
LSH, from rensa (a maintained Rust MinHash/LSH library: per-document signatures at ~13 MB/s of
text on one core here, datasketch's pure-Python permutations being several times slower;
datatrove's MinHash runs as four separate stages over files on disk, built for a cluster). A
document whose estimated Jaccard similarity with a document already kept reaches the threshold
is dropped: one document per cluster survives, as in FineWeb, so no cluster can straddle the
train/validation split. 128 permutations in 32 bands of 4: a pair at Jaccard 0.8 shares a band
with probability 1 - (1 - 0.8^4)^32 > 0.9999999, one at 0.5 with 0.87 (and is then checked
against the threshold), so the banding misses no pair above the threshold in practice.
"""
from __future__ import annotations

from array import array

import numpy as np
from rensa import RMinHash, RMinHashLSH

NUM_PERM, BANDS = 128, 32
SHINGLE_WORDS = 5
SEED = 20250101        # fixed: the same corpus is cleaned the same way on every run


def exact_key(text: str) -> int:
    """A key equal for texts that differ only in case and whitespace. Python's str hash is salted
    per process, which changes no decision: only equality within one run counts."""
    return hash(" ".join(text.lower().split()))


def line_keys(text: str) -> list[int]:
    """The keys of the distinct non-blank lines of `text` (stripped, lowercased)."""
    return list({hash(key) for line in text.split("\n") if (key := line.strip().lower())})


class LineCounter:
    """Every distinct line of every document, as (key, document index) pairs in flat arrays:
    16 bytes a line, where a dict of sets would take ten times that."""

    def __init__(self) -> None:
        self._keys = array("q")
        self._documents = array("q")

    def add(self, index: int, keys: list[int]) -> None:
        """The line_keys of document `index`."""
        self._keys.extend(keys)
        self._documents.extend([index] * len(keys))

    def boilerplate(self, min_documents: int) -> dict[int, int]:
        """{line key: the first document holding it} for lines in >= min_documents documents."""
        keys = np.frombuffer(self._keys, dtype=np.int64)
        documents = np.frombuffer(self._documents, dtype=np.int64)
        if not len(keys):
            return {}
        order = np.lexsort((documents, keys))
        keys, documents = keys[order], documents[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        counts = np.diff(np.append(starts, len(keys)))
        common = starts[counts >= min_documents]
        return dict(zip(keys[common].tolist(), documents[common].tolist()))


def strip_lines(index: int, text: str, boilerplate: dict[int, int]) -> tuple[str, list[str]]:
    """`text` without its boilerplate lines (kept in the first document holding each), and the
    lines removed."""
    lines = text.split("\n")
    keys = [hash(line.strip().lower()) for line in lines]
    if boilerplate.keys().isdisjoint(keys):   # most documents: one C-speed test
        return text, []
    kept, removed = [], []
    for line, key in zip(lines, keys):
        first = boilerplate.get(key) if line.strip() else None
        if first is None or first == index:
            kept.append(line)
        else:
            removed.append(line)
    return ("\n".join(kept).strip() if removed else text), removed


class NearDuplicates:
    """The documents kept so far, indexed for near-duplicate search."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._index = RMinHashLSH(threshold=threshold, num_perm=NUM_PERM, num_bands=BANDS)
        self._kept: dict[int, RMinHash] = {}

    @staticmethod
    def signature(text: str) -> RMinHash:
        words = text.lower().split()
        shingles = [" ".join(words[i:i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))]
        signature = RMinHash(num_perm=NUM_PERM, seed=SEED)
        signature.update(shingles)
        return signature

    def match(self, key: int, signature: RMinHash) -> int | None:
        """The kept document `signature` nearly duplicates, or None after keeping it as `key`."""
        for other in sorted(self._index.query(signature)):
            if signature.jaccard(self._kept[other]) >= self.threshold:
                return other
        self._index.insert(key, signature)
        self._kept[key] = signature
        return None
