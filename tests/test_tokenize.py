"""The tokenize stage on the real demo corpus (the shared `demo_tokens` fixture) and on small
corpora built per test for the bad inputs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from pipeline.registry import run_stage
from pipeline.data import bpe, encode
from pipeline.stages import estimate
from pipeline.core import params as params_module
from pipeline.data.cleaned import CleanedCorpus
from pipeline.data.corpus import is_val
from pipeline.core.errors import PipelineError
from pipeline.data.tokens import TokenWriter, read_header, read_tokens

ROOT = Path(__file__).resolve().parent.parent
AZ = "Azərbaycan dili: ə ğ ı İ ö ş ü ç."


def small_params(tmp_path: Path, *overrides: str):
    """Every clean rule off: the corpus reaches tokenize as written (tests/test_clean.py tests them)."""
    sets = [f"paths.corpus={tmp_path / 'corpus'}", f"paths.clean={tmp_path / 'clean'}",
            f"paths.reports={tmp_path / 'reports'}", f"paths.tokenizer={tmp_path / 'tokenizer'}",
            f"paths.tokens={tmp_path / 'tokens'}", "tokenizer.vocab_size=300", "clean.exact_dedup=false",
            "clean.boilerplate=false", "clean.near_dedup=false", "clean.quality=false",
            "tokenizer.train_sample_bytes=0", "model.context=8", "data.val_fraction=0.2"]
    return params_module.load([ROOT / "params.yaml"], sets + list(overrides))


def clean_and_tokenize(params):
    run_stage("clean", params)
    return run_stage("tokenize", params)


def write_corpus(tmp_path: Path, docs: list[str]) -> None:
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "corpus" / "docs.txt").write_text("\n\n".join(docs), encoding="utf-8")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


DOCS = [f"Sənəd {i}: {AZ} The quick brown fox {i} jumps over the lazy dog." for i in range(60)]


# --- the demo corpus -----------------------------------------------------------------------------

def test_manifest_describes_the_token_files(demo_tokens):
    manifest, paths = demo_tokens.manifest, demo_tokens.params.paths
    assert json.loads((paths.tokens / "manifest.json").read_text(encoding="utf-8")) == manifest
    for split in ("train", "val"):
        dtype, count = read_header(paths.tokens / f"{split}.bin")
        assert count == manifest[f"{split}_tokens"] > demo_tokens.params.model.context
        assert dtype.name == manifest["dtype"] == "uint16"
        assert manifest["sha256"][f"{split}.bin"] == sha(paths.tokens / f"{split}.bin")
        ids = read_tokens(paths.tokens / f"{split}.bin")
        assert int(ids.max()) < manifest["vocab_size"]
        # one end-of-text token after every document
        assert int((ids == manifest["eot_token_id"]).sum()) == manifest["documents"][split]
    assert manifest["tokenizer_sha256"] == sha(paths.tokenizer / "tokenizer.json")
    assert manifest["bytes_per_token"] == pytest.approx(
        (manifest["train_bytes"] + manifest["val_bytes"]) / (manifest["train_tokens"] + manifest["val_tokens"]),
        rel=1e-5)
    assert 0 < manifest["unigram_entropy_nats"] < np.log(manifest["vocab_size"])
    assert manifest["invalid_utf8_replacements"] == 0
    assert manifest["params"]["tokenizer"] == demo_tokens.params.section("tokenizer")
    assert manifest["versions"]["tokenizers"] and "git_revision" in manifest


def test_autotokenizer_loads_it_offline_and_round_trips_azerbaijani(demo_tokens):
    paths = demo_tokens.params.paths
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer), local_files_only=True)
    assert tok.eos_token == bpe.EOT and tok.eos_token_id == demo_tokens.manifest["eot_token_id"]
    text = "Bakıda bu gün hava günəşli olacaq. İlqar çörək alır, Şəbnəm çay içir. Ünvan: Gəncə, Göygöl."
    assert tok.decode(tok.encode(text)) == text
    # the first train document decodes back to the corpus text it came from
    ids = read_tokens(paths.tokens / "train.bin")
    first = np.asarray(ids[: int(np.argmax(ids == demo_tokens.manifest["eot_token_id"]))])
    cleaned = CleanedCorpus(paths.clean, demo_tokens.params.data.val_fraction)
    first_doc = next(p.text for p in cleaned.pieces() if not p.is_val)
    assert tok.decode(first.tolist()) == first_doc


def test_tokenizing_twice_gives_byte_identical_outputs(demo_tokens, tmp_path):
    again = demo_tokens.params.model_copy(update={"paths": demo_tokens.params.paths.model_copy(
        update={"tokenizer": tmp_path / "tokenizer", "tokens": tmp_path / "tokens"})})
    run_stage("tokenize", again).as_dict()
    first, second = demo_tokens.params.paths, again.paths
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (second.tokenizer / name).read_bytes() == (first.tokenizer / name).read_bytes()
    for name in ("train.bin", "val.bin"):
        assert sha(second.tokens / name) == sha(first.tokens / name)


# --- small corpora -------------------------------------------------------------------------------

def test_text_that_spells_the_end_of_text_token_is_not_a_boundary(tmp_path):
    docs = DOCS[:40] + [f"a document mentioning {bpe.EOT} in its text {i}" for i in range(20)]
    write_corpus(tmp_path, docs)
    manifest = clean_and_tokenize(small_params(tmp_path)).as_dict()
    for split in ("train", "val"):
        ids = read_tokens(tmp_path / "tokens" / f"{split}.bin")
        assert int((ids == manifest["eot_token_id"]).sum()) == manifest["documents"][split]
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == 60


def test_replacements_are_counted_in_the_manifest_and_printed(tmp_path, capsys):
    write_corpus(tmp_path, DOCS)
    with open(tmp_path / "corpus" / "docs.txt", "ab") as fh:
        fh.write(b"\n\nbroken \xff\xfe bytes")
    manifest = clean_and_tokenize(small_params(tmp_path)).as_dict()
    assert manifest["invalid_utf8_replacements"] == 2
    assert "2 undecodable bytes were replaced" in capsys.readouterr().out


@pytest.mark.parametrize("vocab, message", [
    (200, r"tokenizer\.vocab_size 200 leaves no room.*at least 258"),
    (2**32 + 1, r"tokenizer\.vocab_size 4294967297 does not fit in uint32"),
])
def test_vocabulary_too_small_or_too_large(tmp_path, vocab, message):
    write_corpus(tmp_path, DOCS)
    with pytest.raises(PipelineError, match=message):
        clean_and_tokenize(small_params(tmp_path, f"tokenizer.vocab_size={vocab}")).as_dict()
    assert not (tmp_path / "tokens").exists() and not (tmp_path / "tokenizer").exists()


def test_a_corpus_too_small_for_one_context_window_stops_before_training(tmp_path):
    """Checked by estimate, the first stage that reads model.context: changing the context must
    not retokenize the corpus."""
    write_corpus(tmp_path, DOCS)
    manifest = clean_and_tokenize(small_params(tmp_path))
    path = tmp_path / "tokens"
    with pytest.raises(PipelineError, match=r"too small for one context window: its val split has "
                                            rf"{manifest.val_tokens} tokens .*model\.context 4096"):
        estimate.check_windows(manifest, 4096, path)
    train = manifest.train_tokens
    with pytest.raises(PipelineError, match=rf"its train split has {train} tokens .*model\.context {train}"):
        estimate.check_windows(manifest.model_copy(update={"val_tokens": 10 * train}), train, path)
    estimate.check_windows(manifest, 8, path)  # both splits hold a window of 8


def test_a_val_fraction_that_leaves_no_val_documents(tmp_path):
    docs = [d for d in DOCS if not is_val(d, 0.01)]
    write_corpus(tmp_path, docs)
    with pytest.raises(PipelineError, match=r"data\.val_fraction leaves no validation documents among the "
                                            rf"{len(docs)}.*raise data\.val_fraction"):
        clean_and_tokenize(small_params(tmp_path, "data.val_fraction=0.01")).as_dict()
    # with a capped BPE sample the problem only shows after encoding: same error, nothing written
    with pytest.raises(PipelineError, match=r"leaves no validation documents"):
        clean_and_tokenize(small_params(tmp_path, "data.val_fraction=0.01", "tokenizer.train_sample_bytes=100")).as_dict()
    assert not (tmp_path / "tokens").exists()


def test_a_val_fraction_that_leaves_no_train_documents(tmp_path):
    docs = [d for d in DOCS if is_val(d, 0.99)]
    write_corpus(tmp_path, docs)
    with pytest.raises(PipelineError, match=r"data\.val_fraction leaves no training documents.*lower"):
        clean_and_tokenize(small_params(tmp_path, "data.val_fraction=0.99")).as_dict()


def test_an_empty_corpus(tmp_path):
    write_corpus(tmp_path, ["", "   ", ""])
    with pytest.raises(PipelineError, match=r"corpus .* holds no text"):
        clean_and_tokenize(small_params(tmp_path)).as_dict()


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_run_leaves_the_previous_outputs_and_nothing_half_written(tmp_path, monkeypatch,
                                                                                 interruption):
    write_corpus(tmp_path, DOCS)
    params = small_params(tmp_path)
    before = clean_and_tokenize(params).as_dict()
    snapshot = {p: p.read_bytes() for d in ("tokens", "tokenizer") for p in (tmp_path / d).iterdir()}

    # more text, encoded in many small chunks; the run dies after writing some of them
    write_corpus(tmp_path, DOCS * 5)
    monkeypatch.setattr(encode, "CHUNK_CHARS", 500)
    writes = []
    real_write = TokenWriter.write

    def dying_write(self, ids):
        writes.append(len(ids))
        if len(writes) == 4:
            raise interruption("killed mid-encode")
        real_write(self, ids)

    monkeypatch.setattr(TokenWriter, "write", dying_write)
    with pytest.raises(interruption):
        clean_and_tokenize(params).as_dict()
    assert {p: p.read_bytes() for d in ("tokens", "tokenizer") for p in (tmp_path / d).iterdir()} == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "corpus", "reports", "tokenizer", "tokens"]  # no leftovers
    assert json.loads((tmp_path / "tokens" / "manifest.json").read_text())["train_tokens"] == before["train_tokens"]


def test_errors_met_while_reading_stop_the_stage_cleanly(tmp_path):
    write_corpus(tmp_path, DOCS)
    (tmp_path / "corpus" / "zz.txt").write_bytes(b"late \xff text\n")
    with pytest.raises(PipelineError, match=r"zz\.txt is not valid UTF-8 \(first bad byte at offset 5\)"):
        clean_and_tokenize(small_params(tmp_path, "data.encoding_errors=strict")).as_dict()
    (tmp_path / "corpus" / "zz.txt").write_bytes(b"\0\1\2 binary")
    with pytest.raises(PipelineError, match=r"zz\.txt looks binary"):
        clean_and_tokenize(small_params(tmp_path)).as_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
