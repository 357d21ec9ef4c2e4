"""Corpus reading: every source format, the split, normalization, and every bad input."""
from __future__ import annotations

import builtins
import errno
import json
import os
import tracemalloc
import unicodedata
from pathlib import Path

import pytest

from pipeline.data import corpus as corpus_module
from pipeline.core import params as params_module
from pipeline.data.corpus import Corpus, is_val
from pipeline.core.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
AZ = "Azərbaycan dili: ə ğ ı İ ö ş ü ç. Bakı şəhəri Xəzərin sahilindədir."


def data_params(**data):
    overrides = [f"data.{key}={value}" for key, value in data.items()]
    return params_module.load([ROOT / "params.yaml"], overrides).data


def texts(source, **data) -> list[str]:
    return [piece.text for piece in Corpus(source, data_params(**data)).pieces()]


# --- formats -------------------------------------------------------------------------------------

def test_txt_documents_are_separated_by_blank_lines_and_files_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("third\n\n\n  \nfourth line 1\nfourth line 2\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("  first\r\n\r\nsecond\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("fifth", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not part of the corpus", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden files are skipped", encoding="utf-8")
    assert texts(tmp_path) == ["first", "second", "third", "fourth line 1\nfourth line 2", "fifth"]


def test_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\nstill one\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("two", encoding="utf-8")
    assert texts(tmp_path, txt_documents="file") == ["one\n\nstill one", "two"]


def test_a_glob_and_a_single_file(tmp_path):
    for name in ("x1.txt", "x2.txt", "y.txt"):
        (tmp_path / name).write_text(name, encoding="utf-8")
    assert texts(f"{tmp_path}/x*.txt") == ["x1.txt", "x2.txt"]
    assert texts(tmp_path / "y.txt") == ["y.txt"]


def test_jsonl_reads_the_text_field(tmp_path):
    rows = [{"text": AZ, "id": 1}, {"text": "second"}, {"body": "x", "text": "third"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n",
                                      encoding="utf-8")
    assert texts(tmp_path) == [AZ, "second", "third"]


def test_jsonl_without_the_field_or_with_bad_json_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"content": "no text"}\n', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"bad\.jsonl:2.*data\.text_field"):
        texts(bad)
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(PipelineError, match=r"bad\.jsonl:2 is not valid JSON"):
        texts(bad)


def test_parquet_is_read_in_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [f"document {i} {AZ}" for i in range(2500)]
    table = pa.table({"id": list(range(2500)), "text": rows[:-1] + [None]})
    pq.write_table(table, tmp_path / "part.parquet", row_group_size=700)
    assert texts(tmp_path) == rows[:-1]
    with pytest.raises(PipelineError, match=r"part\.parquet has no column 'content' \(columns: id, text\).*data\.text_field"):
        texts(tmp_path, text_field="content")
    # the column is there, holding something other than text
    with pytest.raises(PipelineError, match=r"part\.parquet: column 'id' \(data\.text_field\) holds int64, not text"):
        texts(tmp_path, text_field="id")


def test_a_datasets_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["alpha", AZ, "gamma"]}).save_to_disk(str(tmp_path / "ds"))
    assert texts(tmp_path / "ds") == ["alpha", AZ, "gamma"]
    splits = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"text": ["v"]}),
                                   "train": datasets.Dataset.from_dict({"text": ["t1", "t2"]})})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert texts(tmp_path / "dd") == ["t1", "t2", "v"]   # splits in name order; our own split follows
    with pytest.raises(PipelineError, match="no column 'body'"):
        texts(tmp_path / "ds", text_field="body")


# --- normalization and the split -----------------------------------------------------------------

def test_nfc_normalization_keeps_azerbaijani_letters(tmp_path):
    decomposed = unicodedata.normalize("NFD", AZ)
    assert decomposed != AZ
    (tmp_path / "a.txt").write_text(decomposed + "\n\n" + AZ, encoding="utf-8")
    assert texts(tmp_path) == [AZ, AZ]
    for letter in "əğıİöşüç":
        assert letter in texts(tmp_path)[0]


def test_split_is_by_content_not_position(tmp_path):
    docs = [f"document number {i}: {AZ}" for i in range(3000)]
    (tmp_path / "a.txt").write_text("\n\n".join(docs), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n".join(reversed(docs)), encoding="utf-8")
    pieces = list(Corpus(tmp_path, data_params(val_fraction=0.1)).pieces())
    forward = {p.text: p.is_val for p in pieces[:3000]}
    backward = {p.text: p.is_val for p in pieces[3000:]}
    assert forward == backward
    assert 200 < sum(forward.values()) < 400       # ~10% of 3000
    assert all(is_val(text, 0.1) == val for text, val in forward.items())


# --- long documents and memory -------------------------------------------------------------------

def test_long_documents_are_cut_at_line_breaks_and_keep_one_split(tmp_path):
    lines = [f"line {i} {AZ}" for i in range(400)]          # ~30k characters
    doc = "\n".join(lines)
    (tmp_path / "a.txt").write_text(f"short one\n\n{doc}\n\nlast", encoding="utf-8")
    pieces = list(Corpus(tmp_path, data_params(max_document_chars=5000)).pieces())
    long = pieces[1:-1]
    assert pieces[0].text == "short one" and pieces[-1].text == "last"
    assert "".join(p.text for p in long) == doc
    assert all(len(p.text) <= 5000 for p in long) and len(long) >= 6
    assert [p.ends_document for p in long] == [False] * (len(long) - 1) + [True]
    assert len({p.is_val for p in long}) == 1
    assert all(p.text.endswith(AZ) for p in long)             # cut where a line ends


def test_one_huge_line_streams_in_bounded_memory(tmp_path):
    size = 50_000_000
    path = tmp_path / "huge.txt"
    with open(path, "w", encoding="ascii") as fh:
        block = "abcdefghij" * 100_000
        for _ in range(size // len(block)):
            fh.write(block)
    data = data_params(max_document_chars=100_000)
    tracemalloc.start()
    try:
        total = pieces = 0
        for piece in Corpus(path, data).pieces():
            total += len(piece.text)
            pieces += 1
            assert len(piece.text) <= 100_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size and pieces == size // 100_000
    assert peak < size / 10, f"peak {peak / 1e6:.1f} MB while streaming a {size / 1e6:.0f} MB line"


# --- bad input -----------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(PipelineError, match=r"paths\.corpus .*nowhere does not exist"):
        Corpus(tmp_path / "nowhere", data_params())


def test_no_matching_files(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(PipelineError, match=r"holds no \.txt/\.jsonl/\.parquet files"):
        Corpus(tmp_path, data_params())
    with pytest.raises(PipelineError, match="no files match this glob"):
        Corpus(f"{tmp_path}/*.txt", data_params())
    with pytest.raises(PipelineError, match=r"suffix '\.png'.*data\.format"):
        Corpus(f"{tmp_path}/*", data_params())


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes("café\n\n".encode() + b"caf\xe9 \xff\xfe ok\n\n" + AZ.encode())
    corpus = Corpus(tmp_path, data_params())
    assert [p.text for p in corpus.pieces()] == ["café", "caf\ufffd \ufffd\ufffd ok", AZ]
    assert corpus.replacements == 3


def test_undecodable_bytes_fail_under_strict_with_the_byte_offset(tmp_path):
    prefix = ("x" * 1_500_000 + "\n\n").encode()        # past the first read, to check the offset
    (tmp_path / "bad.txt").write_bytes(prefix + b"caf\xe9\n")
    corpus = Corpus(tmp_path, data_params(encoding_errors="strict"))
    with pytest.raises(PipelineError, match=rf"bad\.txt is not valid UTF-8 \(first bad byte at offset "
                                            rf"{len(prefix) + 3}\).*data\.encoding_errors"):
        list(corpus.pieces())


def test_a_binary_file_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    with pytest.raises(PipelineError, match=r"b\.txt looks binary.*remove it.*fix the glob"):
        list(Corpus(tmp_path, data_params()).pieces())


def test_reading_does_not_depend_on_where_blocks_end(tmp_path, monkeypatch):
    raw = ("first\r\n\r\nsecond ə İ ş\r\nline\rold mac\n\n".encode() + b"bad \xe9 byte\n\n" + AZ.encode()) * 3
    (tmp_path / "a.txt").write_bytes(raw)
    whole = Corpus(tmp_path, data_params())
    expected = list(whole.pieces())
    assert expected[:3] == [("first", True, expected[0].is_val), ("second ə İ ş\nline\nold mac", True,
                            expected[1].is_val), ("bad \ufffd byte", True, expected[2].is_val)]
    for size in (1, 2, 3, 5, 7):       # every multi-byte letter and \r\n split across blocks
        monkeypatch.setattr("pipeline.data.corpus.READ_BYTES", size)
        corpus = Corpus(tmp_path, data_params())
        assert list(corpus.pieces()) == expected
        assert corpus.replacements == whole.replacements == 3


# --- unreadable, damaged and special entries -----------------------------------------------------

def refuse_to_open(path: Path, monkeypatch) -> None:
    """chmod 000, and as root (who may read it anyway) make opening it fail as it would for others."""
    path.chmod(0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def open_unless_refused(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(corpus_module, "open", open_unless_refused, raising=False)


def refuse_to_list(directory: Path, monkeypatch) -> None:
    """chmod 000, and as root make listing it fail as it would for others."""
    directory.chmod(0)
    if os.geteuid() == 0:
        real_scandir = os.scandir

        def scandir_unless_refused(path="."):
            if Path(path) == directory:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir_unless_refused)


def test_an_unreadable_file_is_an_error_before_any_reading(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    locked = tmp_path / "b.txt"
    locked.write_text("not readable", encoding="utf-8")
    refuse_to_open(locked, monkeypatch)
    message = rf"{locked} cannot be read \(Permission denied\): make it readable \(chmod a\+r\), or move it out"
    with pytest.raises(PipelineError, match=message):
        Corpus(tmp_path, data_params())
    with pytest.raises(PipelineError, match=message):
        Corpus(locked, data_params())
    locked.chmod(0o644)


def test_an_unreadable_subdirectory_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("behind a locked door", encoding="utf-8")
    refuse_to_list(tmp_path / "sub", monkeypatch)
    with pytest.raises(PipelineError, match=rf"directory {tmp_path / 'sub'} cannot be read \(Permission "
                                            r"denied\): make it readable \(chmod a\+rx\), or move it out"):
        Corpus(tmp_path, data_params())
    (tmp_path / "sub").chmod(0o755)


def test_links_fifos_and_linked_directories_are_skipped_counted_and_warned_once(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    elsewhere = tmp_path / "elsewhere"
    corpus.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.txt").write_text("behind a link", encoding="utf-8")
    (corpus / "a.txt").write_text("kept", encoding="utf-8")
    for name in ("gone1.txt", "gone2.txt", "gone3.txt", "gone4.txt"):
        (corpus / name).symlink_to(tmp_path / "missing.txt")
    (corpus / "loop.txt").symlink_to(corpus / "loop.txt")
    (corpus / "notes.md").symlink_to(tmp_path / "missing.md")        # not corpus text anyway
    (corpus / ".hidden.txt").symlink_to(tmp_path / "missing.txt")    # hidden: not corpus
    os.mkfifo(corpus / "pipe.txt")                                   # opening it would block forever
    (corpus / "linked").symlink_to(elsewhere)
    source = Corpus(corpus, data_params())
    assert [p.text for p in source.pieces()] == ["kept"] == [p.text for p in source.pieces()]
    broken = [str(corpus / name) for name in ("gone1.txt", "gone2.txt", "gone3.txt", "gone4.txt", "loop.txt")]
    assert source.skipped == {"broken_symlinks": broken, "special_files": [str(corpus / "pipe.txt")],
                              "symlinked_directories": [str(corpus / "linked")]}
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"corpus: warning: skipped 5 broken symlink(s) in paths.corpus {corpus} ({', '.join(broken[:3])} and 2 "
        "more): their targets do not exist: fix or remove the links",
        f"corpus: warning: skipped 1 symlinked director(y/ies) in paths.corpus {corpus} ({corpus / 'linked'}): "
        "links to directories are not followed: link the files instead, or move the directory into the corpus",
        f"corpus: warning: skipped 1 FIFO(s), socket(s) or device(s) in paths.corpus {corpus} "
        f"({corpus / 'pipe.txt'}): only regular files are read: remove them from the corpus",
    ]
    globbed = Corpus(f"{corpus}/*.txt", data_params())
    assert globbed.skipped["broken_symlinks"] == broken
    assert globbed.skipped["special_files"] == [str(corpus / "pipe.txt")]


def test_a_fifo_or_broken_link_named_as_the_corpus_is_an_error(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(PipelineError, match=r"pipe\.txt is not a regular file \(a FIFO, socket or device\)"):
        Corpus(tmp_path / "pipe.txt", data_params())
    (tmp_path / "link.txt").symlink_to(tmp_path / "missing.txt")
    with pytest.raises(PipelineError, match=r"link\.txt is a symlink to .*missing\.txt, which does not exist"):
        Corpus(tmp_path / "link.txt", data_params())


def _save_dataset(directory: Path, splits: bool = False) -> Path:
    import datasets

    dataset = datasets.Dataset.from_dict({"text": ["alpha", "beta"]})
    (datasets.DatasetDict({"train": dataset}) if splits else dataset).save_to_disk(str(directory))
    return directory


def _delete_arrow(ds: Path) -> None:
    for arrow in ds.rglob("*.arrow"):
        arrow.unlink()


def _truncate_arrow(ds: Path) -> None:
    for arrow in ds.rglob("*.arrow"):
        os.truncate(arrow, 100)


def _garble_info(ds: Path) -> None:
    (ds / "dataset_info.json").write_text("{not json", encoding="utf-8")


@pytest.mark.parametrize("damage, splits, message", [
    (_delete_arrow, False, r"cannot be read, it looks damaged \(FileNotFoundError: .*\.arrow"),
    (_delete_arrow, True, r"cannot be read, it looks damaged \(FileNotFoundError: .*\.arrow"),
    (_truncate_arrow, False, r"cannot be read, it looks damaged \(ArrowInvalid: "),
    (_garble_info, False, r"cannot be read, it looks damaged \(JSONDecodeError: "),
    (lambda ds: (ds / "dataset_info.json").unlink(), False,
     r"looks like a dataset saved with save_to_disk, but its dataset_info\.json is missing"),
], ids=["arrow deleted", "split's arrow deleted", "arrow truncated", "info garbled", "info deleted"])
def test_a_damaged_dataset_is_one_error_naming_it(tmp_path, damage, splits, message):
    damage(_save_dataset(tmp_path / "ds", splits))
    with pytest.raises(PipelineError, match=message) as info:
        list(Corpus(tmp_path / "ds", data_params()).pieces())
    assert str(tmp_path / "ds") in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).endswith(": save it again with save_to_disk, or fix paths.corpus") or \
        str(info.value).endswith(": save the dataset again, or fix paths.corpus")


def test_a_damaged_dataset_exits_2_through_the_cli(tmp_path, capsys):
    from pipeline.__main__ import main

    _delete_arrow(_save_dataset(tmp_path / "ds"))
    capsys.readouterr()                  # the progress bar of save_to_disk
    outputs = [f"--set=paths.{name}={tmp_path / name}" for name in ("clean", "reports")]
    assert main(["clean", "--params", str(ROOT / "params.yaml"), f"--set=paths.corpus={tmp_path / 'ds'}",
                 *outputs]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: dataset {tmp_path / 'ds'} cannot be read, it looks damaged") and err.count("\n") == 1


def test_a_parquet_file_damaged_inside_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 50 for i in range(3000)]}), path, row_group_size=500)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 2000] = bytes(range(256)) * 7 + bytes(208)   # inside a row group, not the footer
    path.write_bytes(bytes(raw))
    with pytest.raises(PipelineError, match=rf"{path} is damaged \(.*\): replace it, or remove it from the corpus"):
        texts(path)
