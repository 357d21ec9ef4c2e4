"""Document quality heuristics of the Gopher / C4 / FineWeb family, with per-language stop words
and thresholds: which rule, if any, a document fails.

    rule = failing_rule(text, THRESHOLDS["az"])    # "few_stop_words", ... or None to keep it

Sources. Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models",
arXiv:2112.11446, appendix A; datatrove's GopherQualityFilter and GopherRepetitionFilter defaults),
C4's "lorem ipsum" rule (Raffel et al. 2020, arXiv:1910.10683, section 2.2) and FineWeb's line
rules (Penedo et al. 2024, arXiv:2406.17557; datatrove's FineWebQualityFilter). The stop words and
the per-language thresholds come from FineWeb-2's configs (github.com/huggingface/fineweb-2,
configs/azj_Latn.yml, tur_Latn.yml, rus_Cyrl.yml), tuned there per language; English keeps the
Gopher and FineWeb defaults. English stop words on Azerbaijani text drop nearly every document
(tests/test_clean.py measures it on real text), which is why the thresholds are per language.

Not here: Gopher's n-gram repetition rules (top and duplicated 2-10-grams), which cost a Counter
per document and overlap with the duplicated-line rules; the model-based classifiers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Characters a line may end with to count as ending a sentence (FineWeb's TERMINAL_PUNCTUATION, short).
TERMINAL_PUNCTUATION = (".", "!", "?", "\"", "'", "”", "»", ":", ";", "。", "！", "？", "…", ")")
BULLETS = ("•", "●", "‣", "–", "-", "*", "·")
STRIP = ".,;:!?\"'()[]«»“”„—–-…"
SHORT_LINE_CHARS = 30            # FineWeb: a line this short or shorter is a short line
_ALPHA_WORD = re.compile(r"\S*[^\W\d_]\S*")   # a word holding a letter (one regex pass: fast)


@dataclass(frozen=True)
class Thresholds:
    """One language's limits: a document outside any of them is dropped, by that rule."""

    stop_words: frozenset[str]
    min_avg_word_length: float
    max_avg_word_length: float
    max_non_alpha_words_ratio: float   # Gopher: drop when fewer than this share of words hold a letter
    dup_line_frac: float               # Gopher repetition: share of lines that repeat an earlier one
    line_punct_thr: float              # FineWeb: drop when fewer lines than this end a sentence
    new_line_ratio: float              # FineWeb: drop when line breaks per word exceed this
    min_words: int = 50                # Gopher
    max_words: int = 100_000           # Gopher
    min_stop_words: int = 2            # Gopher
    max_symbol_word_ratio: float = 0.1     # Gopher: '#' and ellipses per word
    max_bullet_lines_ratio: float = 0.9    # Gopher
    max_ellipsis_lines_ratio: float = 0.3  # Gopher
    short_line_thr: float = 0.67           # FineWeb: share of lines of <= 30 characters
    char_duplicates_ratio: float = 0.01    # FineWeb: characters in repeated lines over all characters


THRESHOLDS: dict[str, Thresholds] = {
    # FineWeb-2 configs/azj_Latn.yml
    "az": Thresholds(
        stop_words=frozenset("və ilə ildə bir bu azərbaycan olan üçün sonra də kimi il isə o görə da "
                             "tərəfindən çox ki onun edir idi".split()),
        min_avg_word_length=3, max_avg_word_length=13, max_non_alpha_words_ratio=0.725,
        dup_line_frac=0.879, line_punct_thr=0.188, new_line_ratio=0.179),
    # FineWeb-2 configs/tur_Latn.yml
    "tr": Thresholds(
        stop_words=frozenset("ve bir olarak bu ile için olan da de tarafından yılında sonra en daha ilk the".split()),
        min_avg_word_length=3, max_avg_word_length=21, max_non_alpha_words_ratio=0.773,
        dup_line_frac=0.303, line_punct_thr=0.2, new_line_ratio=0.273),
    # FineWeb-2 configs/rus_Cyrl.yml
    "ru": Thresholds(
        stop_words=frozenset("в и на с года по году из был к не от что за для его как а он также до после".split()),
        min_avg_word_length=3, max_avg_word_length=11, max_non_alpha_words_ratio=0.713,
        dup_line_frac=0.322, line_punct_thr=0.231, new_line_ratio=0.139),
    # Gopher's stop words and limits; FineWeb's line rules at their English defaults
    "en": Thresholds(
        stop_words=frozenset("the be to of and that have with".split()),
        min_avg_word_length=3, max_avg_word_length=10, max_non_alpha_words_ratio=0.8,
        dup_line_frac=0.3, line_punct_thr=0.12, new_line_ratio=0.3),
}

# Every rule failing_rule can return, in the order they are tried: a report lists them so.
RULES = ("too_few_words", "too_many_words", "avg_word_length", "symbols", "non_alpha_words",
         "few_stop_words", "bullet_lines", "ellipsis_lines", "lorem_ipsum", "duplicate_lines",
         "duplicate_line_chars", "line_punctuation", "short_lines", "new_lines")


def failing_rule(text: str, limits: Thresholds) -> str | None:
    """The first rule `text` fails, or None."""
    words = text.split()
    n_words = len(words)
    if n_words < limits.min_words:
        return "too_few_words"
    if n_words > limits.max_words:
        return "too_many_words"
    avg = sum(map(len, words)) / n_words
    if not limits.min_avg_word_length <= avg <= limits.max_avg_word_length:
        return "avg_word_length"
    if (text.count("#") + text.count("...") + text.count("…")) / n_words > limits.max_symbol_word_ratio:
        return "symbols"
    if len(_ALPHA_WORD.findall(text)) / n_words < limits.max_non_alpha_words_ratio:
        return "non_alpha_words"
    if not _has_stop_words(words, limits.stop_words, limits.min_stop_words):
        return "few_stop_words"
    return _line_rule(text, n_words, limits)


def _line_rule(text: str, n_words: int, limits: Thresholds) -> str | None:
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if line]
    n_lines = len(lines)
    if sum(line.startswith(BULLETS) for line in lines) / n_lines > limits.max_bullet_lines_ratio:
        return "bullet_lines"
    if sum(line.endswith(("...", "…")) for line in lines) / n_lines > limits.max_ellipsis_lines_ratio:
        return "ellipsis_lines"
    if "lorem ipsum" in text.lower():
        return "lorem_ipsum"
    seen: set[str] = set()
    repeated_lines = repeated_chars = 0
    for line in lines:
        if line in seen:
            repeated_lines += 1
            repeated_chars += len(line)
        seen.add(line)
    if repeated_lines / n_lines > limits.dup_line_frac:
        return "duplicate_lines"
    if repeated_chars / max(1, sum(map(len, lines))) > limits.char_duplicates_ratio:
        return "duplicate_line_chars"
    if sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / n_lines < limits.line_punct_thr:
        return "line_punctuation"
    if sum(len(line) <= SHORT_LINE_CHARS for line in lines) / n_lines > limits.short_line_thr:
        return "short_lines"
    if text.count("\n") / n_words > limits.new_line_ratio:
        return "new_lines"
    return None




def _has_stop_words(words: list[str], stop_words: frozenset[str], needed: int) -> bool:
    found = 0
    for word in words:
        if word.lower().strip(STRIP) in stop_words:
            found += 1
            if found >= needed:
                return True
    return False
