"""The bundled demo corpus: byte-identical every run, multilingual, and with its structure right."""
from __future__ import annotations

import datetime
import os
import re

import pytest

from pipeline.tools import demo_corpus
from pipeline.core.errors import PipelineError


@pytest.fixture(scope="module")
def files():
    return demo_corpus.generate()


def test_generation_is_byte_identical_and_about_the_size_asked(files):
    assert demo_corpus.generate() == files
    assert sorted(files) == ["az.txt", "en.txt", "ru.txt", "tr.txt"]
    for name, data in files.items():
        target = demo_corpus.DEFAULT_SIZE_MB * 1e6 * demo_corpus.SHARES[name[:2]]
        assert target <= len(data) < target * 1.01
    assert 200_000 <= sum(len(data) for data in demo_corpus.generate(size_mb=0.2).values()) < 210_000


def test_each_language_is_there_with_its_letters(files):
    text = {name[:2]: data.decode("utf-8") for name, data in files.items()}
    assert set("əğıİöşüç") <= set(text["az"])
    assert set("ğışöüçİ") <= set(text["tr"]) and "ə" not in text["tr"]
    assert sum("а" <= ch <= "я" for ch in text["ru"]) > len(text["ru"]) / 2
    assert "Tomorrow will be" in text["en"] and "Azerbaijan" in text["en"]


def test_documents_vary(files):
    docs = [doc for data in files.values() for doc in data.decode("utf-8").split("\n\n")]
    assert len(docs) > 10_000
    assert len(set(docs)) > 0.97 * len(docs)


def test_sums_are_right(files):
    lines = re.findall(r"^(\d+) ([-+×]) (\d+) = (\d+)$", b"".join(files.values()).decode("utf-8"), re.M)
    assert len(lines) > 5000
    ops = {"+": int.__add__, "-": int.__sub__, "×": int.__mul__}
    assert all(ops[op](int(a), int(b)) == int(c) for a, op, b, c in lines)


def test_weekdays_match_the_calendar(files):
    english = demo_corpus.LANGUAGES["en"]
    rows = re.findall(r"^(\d+) (\w+) (\d{4}) — (\w+)$", files["en.txt"].decode("utf-8"), re.M)
    assert len(rows) > 1000
    for day, month, year, weekday in rows:
        date = datetime.date(int(year), english.months.index(month) + 1, int(day))
        assert english.weekdays[date.weekday()] == weekday


def test_grammar_agrees(files):
    az, ru = files["az.txt"].decode("utf-8"), files["ru.txt"].decode("utf-8")
    assert re.search(r"\bMən [^.]* (oxuyuram|yazıram|içirəm|yeyirəm|alıram)\.", az)
    assert not re.search(r"\bMən [^.]* \w+(ır|ir|ur|ür)\.", az)                 # never the bare 3rd person
    assert not re.search(r"\bBiz [^.]* \w+(am|əm|san|sən)\.", az)
    assert not re.search(r"(?<![-\d])1 градусов|\b5 градуса\b", ru)
    assert not re.search(r"Вчера был (среда|пятница|суббота)", ru)
    assert "Bakı Azərbaycanın paytaxtıdır." in az


def test_azerbaijani_suffixes_follow_vowel_harmony():
    # checked by hand against Azerbaijani usage
    assert [demo_corpus.az_copula(w) for w in ("beş", "üç", "altı", "on", "doqquz", "iyirmi", "qırx", "yüz")] == [
        "beşdir", "üçdür", "altıdır", "ondur", "doqquzdur", "iyirmidir", "qırxdır", "yüzdür"]
    assert [demo_corpus.az_locative(w) for w in ("Bakı", "Gəncə", "Şəki", "Quba", "Daşkənd")] == [
        "Bakıda", "Gəncədə", "Şəkidə", "Qubada", "Daşkənddə"]
    assert [demo_corpus.az_genitive(w) for w in ("Azərbaycan", "Türkiyə", "Rusiya", "İran")] == [
        "Azərbaycanın", "Türkiyənin", "Rusiyanın", "İranın"]
    assert demo_corpus.upper_first("iki", turkic=True) == "İki" and demo_corpus.upper_first("в Баку") == "В Баку"


def test_sums_in_words_are_right(files):
    az = demo_corpus.LANGUAGES["az"]
    right = {az.sum_sentence(a, op, b, c) for a, op, b, c in
             [(a, "+", b, a + b) for a in range(51) for b in range(51)]
             + [(a, "-", b, a - b) for a in range(51) for b in range(a + 1)]
             + [(a, "*", b, a * b) for a in range(11) for b in range(11)]}
    said = re.findall(r"^.* (?:üstəgəl|çıx|vurulsun) .*\.$", files["az.txt"].decode("utf-8"), re.M)
    assert len(said) > 1000 and set(said) <= right


def test_snow_only_in_the_cold(files):
    for place, day in re.findall(r"in (\w+) it will be snowy\. The temperature will reach (-?\d+)",
                                 files["en.txt"].decode("utf-8")):
        assert int(day) <= 1, place


def test_write_is_atomic_and_skips_identical_content(tmp_path):
    out = tmp_path / "demo"
    small = demo_corpus.generate(0.05)
    assert demo_corpus.write(out, small) is True
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    os.utime(out / "az.txt", ns=(1, 1))                       # a rewrite would reset this
    assert demo_corpus.write(out, small) is False
    assert (out / "az.txt").stat().st_mtime_ns == 1
    assert demo_corpus.write(out, demo_corpus.generate(0.06)) is True
    assert set(mtimes) == {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]     # no staging leftovers


def test_refuses_to_replace_a_directory_holding_other_files(tmp_path):
    (tmp_path / "my-corpus.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"holds files the demo corpus did not write \(my-corpus\.txt\)"):
        demo_corpus.write(tmp_path, demo_corpus.generate(0.05))
    assert (tmp_path / "my-corpus.txt").read_text(encoding="utf-8") == "precious"
