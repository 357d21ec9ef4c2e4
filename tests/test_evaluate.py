"""The evaluate stage on a tiny real model (2 layers, 32 wide) and real BPE tokens built here."""
from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import recordkit
import torch
from dvclive import Live
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from pipeline.registry import run_stage
from pipeline.engine import checkpoint
from pipeline.evaluation import loading, sampling, scoring
from pipeline.core import params as P
from pipeline.reports import quantities as report
from pipeline.__main__ import main
from pipeline.core.errors import PipelineError
from pipeline.model.build import build_model
from pipeline.data.tokens import read_tokens, write_tokens

EOT = "<|endoftext|>"
CONTEXT = 16
TEXTS = [
    "Azərbaycan Respublikası Cənubi Qafqazda yerləşir. Paytaxtı Bakı şəhəridir.",
    "Bakı şəhəri Xəzər dənizinin sahilində yerləşir və böyük limanı var.",
    "Bu gün hava çox gözəldir, günəş parlayır və külək əsmir.",
    "The history of machine learning is long and full of surprises.",
    "Machine learning is the study of programs that improve with data.",
    "Tokenizers split text into pieces; models predict the next piece.",
]
PROMPTS = ["Azərbaycan", "Bakı şəhəri", "The history of"]


def _tokenizer(texts: list[str], vocab: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT)


def _tiny_model(vocab: int, eot: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    return GPT2LMHeadModel(config)


def _train(net: GPT2LMHeadModel, opt: torch.optim.Optimizer, ids: np.ndarray, steps: int) -> GPT2LMHeadModel:
    """A few real AdamW steps on random train windows, so checkpoints differ as real ones do."""
    gen = torch.Generator().manual_seed(steps)
    data = torch.from_numpy(ids.astype(np.int64))
    net.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (8,), generator=gen)
        batch = torch.stack([data[s:s + CONTEXT + 1] for s in starts])
        net(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return net.eval()


def _encode_docs(tok, docs: list[str], eot: int) -> np.ndarray:
    ids: list[int] = []
    for doc in docs:
        ids += tok(doc, add_special_tokens=False)["input_ids"] + [eot]
    return np.array(ids, dtype=np.uint16)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_world(root: Path) -> Path:
    """data/tokenizer, data/tokens, models/final, checkpoints/, reports/{cost,train}.json, train_live."""
    tok = _tokenizer(TEXTS * 20, vocab=320)
    eot = tok.convert_tokens_to_ids(EOT)
    vocab = len(tok)
    tok.save_pretrained(root / "data/tokenizer")
    train_docs, val_docs = TEXTS * 3, TEXTS[::2] + TEXTS[1:4]
    tokens = root / "data/tokens"
    train, val = _encode_docs(tok, train_docs, eot), _encode_docs(tok, val_docs, eot)
    write_tokens(tokens / "train.bin", train)
    write_tokens(tokens / "val.bin", val)
    recordkit.manifest(
        tokens / "manifest.json", train_tokens=int(train.size), val_tokens=int(val.size),
        documents={"train": len(train_docs), "val": len(val_docs)},
        train_bytes=sum(len(d.encode()) for d in train_docs), val_bytes=sum(len(d.encode()) for d in val_docs),
        vocab_size=vocab, eot_token_id=eot, tokenizer_sha256=_sha(root / "data/tokenizer/tokenizer.json"),
        sha256={"train.bin": _sha(tokens / "train.bin"), "val.bin": _sha(tokens / "val.bin")})

    net = _tiny_model(vocab, eot)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for step, train_steps, val_loss in ((2, 5, 5.9), (4, 15, 6.1)):
        _train(net, opt, train, train_steps)
        checkpoint.save(root / "checkpoints", step, net, {"optimizer": opt.state_dict()},
                        {"step": step, "tokens": step * 1024, "val_loss": val_loss}, {"train": [], "val": []})
    checkpoint.prune_and_index(root / "checkpoints", keep_last=2)
    net.save_pretrained(root / "models/final")
    tok.save_pretrained(root / "models/final")

    reports = root / "reports"
    reports.mkdir()
    # train records the estimate it was gated with; evaluate holds the run against that one
    estimate = recordkit.cost(reports / "cost.json").as_dict()
    recordkit.train(reports / "train.json", stop_reason="early_stopping", estimate=estimate)
    with Live(dir=str(reports / "train_live"), dvcyaml=None, save_dvc_exp=False) as live:
        for step in range(1, 5):  # the metric names pipeline/engine/trainlog.py logs
            live.step = step
            live.log_metric("train/loss", 6.0 - 0.2 * step)
            live.log_metric("train/lr", 0.01)
            live.log_metric("train/tokens_per_second", 0.75)
            if step % 2 == 0:
                live.log_metric("val/loss", 6.1 - 0.1 * step)
                live.log_metric("val/perplexity", 400.0)
    return root


def make_params(root: Path, *overrides: str) -> P.Params:
    sets = [f"paths.{k}={root / v}" for k, v in (("tokenizer", "data/tokenizer"), ("tokens", "data/tokens"),
            ("reports", "reports"), ("checkpoints", "checkpoints"), ("model", "models/final"))]
    # params.model describes the model under evaluation (_tiny_model)
    sets += ["model.architecture=gpt2", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
             f"model.context={CONTEXT}", "evaluate.batch_size=3", "evaluate.max_new_tokens=8",
             "evaluate.checkpoints=all", "train.device=cpu", "train.tokens_per_step=1024",
             f"evaluate.prompts={json.dumps(PROMPTS)}", *overrides]
    return P.load([Path(__file__).parents[1] / "params.yaml"], sets)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def evaluated(world) -> dict:
    return run_stage("evaluate", make_params(world))


@pytest.fixture
def copy(world, tmp_path) -> Path:
    """A private copy of the world a test may break."""
    shutil.copytree(world, tmp_path / "w")
    shutil.rmtree(tmp_path / "w/reports")
    (tmp_path / "w/reports").mkdir()
    return tmp_path / "w"


def _hand_nats(model_dir: Path, stream: list[int], context: int) -> float:
    net = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, context):
            window = stream[start:start + context + 1]
            logits = net(torch.tensor([window[:-1]])).logits[0]
            log_p = torch.log_softmax(logits.double(), dim=-1)
            total -= sum(log_p[i, t].item() for i, t in enumerate(window[1:]))
    return total


# ---- numbers -----------------------------------------------------------------------------------

def test_loss_perplexity_and_bits_per_byte_match_a_hand_computation(world, evaluated):
    manifest = json.loads((world / "data/tokens/manifest.json").read_text())
    val = np.fromfile(world / "data/tokens/val.bin", dtype="<u2", offset=256).tolist()
    stream = [manifest["eot_token_id"]] + val  # val starts mid-document: end-of-text is its context
    assert (len(stream) - 1) % CONTEXT, "the case must exercise the shorter tail window"
    nats = _hand_nats(world / "models/final", stream, CONTEXT)
    assert evaluated["val_tokens_scored"] == len(val)
    assert evaluated["val_loss"] == pytest.approx(nats / len(val), rel=1e-5)
    assert evaluated["perplexity"] == pytest.approx(math.exp(evaluated["val_loss"]), rel=1e-12)
    assert evaluated["bits_per_byte"] == pytest.approx(nats / math.log(2) / manifest["val_bytes"], rel=1e-5)


def test_unigram_baseline_matches_a_hand_computation(world, evaluated):
    manifest = json.loads((world / "data/tokens/manifest.json").read_text())
    train = np.fromfile(world / "data/tokens/train.bin", dtype="<u2", offset=256)
    val = np.fromfile(world / "data/tokens/val.bin", dtype="<u2", offset=256)
    counts = np.bincount(train, minlength=manifest["vocab_size"]) + 1
    nats = -sum(math.log(counts[t] / counts.sum()) for t in val)
    assert evaluated["unigram"]["val_loss"] == pytest.approx(nats / len(val), rel=1e-9)
    assert evaluated["unigram"]["bits_per_byte"] == pytest.approx(nats / math.log(2) / manifest["val_bytes"])


def test_evaluating_the_same_model_twice_gives_identical_outputs(world, evaluated, tmp_path):
    first, second = world / "reports", tmp_path / "reports"
    second.mkdir()
    for name in ("cost.json", "train.json", "train_live"):
        (shutil.copytree if name == "train_live" else shutil.copy)(first / name, second / name)
    again = run_stage("evaluate", make_params(world, f"paths.reports={second}"))
    assert again == evaluated
    for name in ("samples.md", "plots/checkpoints.csv", "plots/loss.png", "plots/checkpoints.png"):
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    # eval.json records its params, and paths.reports is the one that differs
    ours, theirs = (json.loads((d / "eval.json").read_text()) for d in (first, second))
    assert ours.pop("params")["paths"]["reports"] != theirs.pop("params")["paths"]["reports"]
    assert ours == theirs


# ---- checkpoints, samples, cost ----------------------------------------------------------------

def test_checkpoints_are_scored_on_the_whole_split_and_twins_reuse_the_final_score(evaluated):
    ckpts = evaluated["checkpoints"]
    assert list(ckpts) == ["step-000002", "step-000004"]
    assert ckpts["step-000004"]["same_weights_as"] == "final"
    assert ckpts["step-000004"]["val_loss"] == evaluated["val_loss"]
    assert ckpts["step-000002"]["same_weights_as"] is None
    assert ckpts["step-000002"]["val_loss"] != evaluated["val_loss"]
    assert ckpts["step-000002"]["train_val_loss"] == 5.9
    cmp = evaluated["best_vs_final"]
    assert cmp["best"] == "step-000002" and cmp["final_is_best"] is False
    assert cmp["final_minus_best"] == pytest.approx(evaluated["val_loss"] - ckpts["step-000002"]["val_loss"])


def test_best_and_final_selects_only_those(world):
    manifest = json.loads((world / "checkpoints/manifest.json").read_text())
    manifest["checkpoints"].insert(0, {"step": 1, "dir": "step-000001", "tokens": 1024, "val_loss": 7.0})
    chosen = scoring.select_checkpoints(manifest, "best_and_final")
    assert [c["dir"] for c in chosen] == ["step-000002", "step-000004"]
    assert scoring.select_checkpoints(manifest, "none") == []
    assert scoring.select_checkpoints(None, "all") == []


def test_samples_cover_every_prompt_and_are_reproducible(world, evaluated):
    text = (world / "reports/samples.md").read_text(encoding="utf-8")
    for prompt in PROMPTS:
        assert f"[{prompt}]" in text
    assert "seed 1234" in text
    net = GPT2LMHeadModel.from_pretrained(world / "models/final").eval()
    tok = PreTrainedTokenizerFast.from_pretrained(world / "models/final")
    params = make_params(world)
    ids = loading.encode_prompts(tok, PROMPTS)
    eot = tok.convert_tokens_to_ids(EOT)
    first = sampling.generate_samples(net, tok, PROMPTS, ids, eot, params.evaluate, torch.device("cpu"))
    torch.manual_seed(999)  # neither the global RNG state nor the order of the prompts matters
    second = sampling.generate_samples(net, tok, PROMPTS[::-1], ids[::-1], eot, params.evaluate, torch.device("cpu"))
    assert first == second[::-1]
    assert torch.initial_seed() == 999
    assert all(s["new_tokens"] > 0 for s in first)


def test_estimate_against_actual(evaluated):
    eva = evaluated["estimate_vs_actual"]
    q = eva["quantities"]
    assert eva["estimate_scale"] == 0.5  # 4096 of 8192 planned tokens were trained
    assert q["hours"] == {"estimate": 1.0, "actual": 1.5, "error_pct": pytest.approx(50.0)}
    assert q["tokens_per_second"]["estimate"] == pytest.approx(8192 / 7200)
    assert q["usd"]["actual"] == pytest.approx(1.5 * 2.0)  # wall hours x the estimate's $/h
    assert q["kwh"]["actual"] == pytest.approx(1.5 * 0.25)  # derived: no measured kWh
    assert eva["kwh_source"].startswith("derived")
    assert q["mfu"]["error_pct"] == pytest.approx(100 * (0.25 - 0.3) / 0.3)
    assert q["peak_memory_bytes"]["error_pct"] == pytest.approx(-50.0)


def test_estimate_against_actual_owned_hardware_with_measured_energy(world):
    # the pricing is the estimate's own (its report), never read from params: evaluate does not declare cost.*
    cost = {"hours": 1.0, "usd": 0.3, "kwh": 2.0, "co2_kg": 0.8, "tokens": 100, "pricing": "owned"}
    train = {"tokens": 100, "wall_hours": 2.0, "kwh": 3.0, "estimate": cost}
    q = report.estimate_vs_actual(train, Path("train.json"))["quantities"]
    assert q["kwh"] == {"estimate": 2.0, "actual": 3.0, "error_pct": pytest.approx(50.0)}
    assert q["usd"]["actual"] == pytest.approx(3.0 * 0.15)  # measured kWh x the estimate's $/kWh
    assert q["co2_kg"]["actual"] == pytest.approx(1.2)
    assert q["mfu"] == {"estimate": None, "actual": None, "error_pct": None}


def test_outputs_are_written_for_dvc_and_people(world, evaluated):
    reports = world / "reports"
    metrics = json.loads((reports / "eval.json").read_text())
    for key in ("val_loss", "perplexity", "bits_per_byte", "unigram", "checkpoints", "estimate_vs_actual"):
        assert key in metrics
    assert metrics["params"]["model"]["context"] == CONTEXT and metrics["versions"]["torch"]
    for name in ("loss", "checkpoints", "estimate_vs_actual"):
        assert (reports / f"plots/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (reports / "plots/checkpoints.csv").read_text().splitlines()
    assert rows[0] == "checkpoint,step,tokens,val_loss,perplexity,bits_per_byte,train_val_loss"
    assert rows[1].startswith("step-000002,2,2048,")
    assert (reports / "plots/loss_train.csv").read_text().splitlines()[1:] == [
        f"{s},{s * 1024},{6.0 - 0.2 * s}" for s in range(1, 5)]
    assert len((reports / "plots/loss_val.csv").read_text().splitlines()) == 3
    assert (reports / "plots/estimate_vs_actual.csv").read_text().startswith("quantity,estimate,actual,error_pct\nhours,1.0,1.5,50.0")
    summary = (reports / "summary.md").read_text(encoding="utf-8")
    for heading in ("## Quality", "## Checkpoints", "## Samples", "## Cost: estimate against actual", "## Files"):
        assert heading in summary
    assert "early_stopping" in summary and "+50.0%" in summary
    # the shape under Transformers' common names, whatever the architecture calls them (GPT-2: n_layer ...)
    assert "**Model**: gpt2 (2 layers, 32 wide, 2 heads, context 32), " in summary


# ---- a model directory alone -------------------------------------------------------------------

def test_a_model_directory_alone_is_evaluated(copy):
    shutil.rmtree(copy / "checkpoints")
    result = run_stage("evaluate", make_params(copy))
    assert result["checkpoints"] == {} and result["best_vs_final"] is None
    assert result["estimate_vs_actual"]["available"] is False
    assert "train.json not found" in result["estimate_vs_actual"]["note"]
    summary = (copy / "reports/summary.md").read_text(encoding="utf-8")
    assert "No checkpoints evaluated" in summary and "not found" in summary
    assert (copy / "reports/plots/estimate_vs_actual.png").is_file()


def test_a_reserialized_but_equal_tokenizer_is_accepted(copy):
    tok = Tokenizer.from_file(str(copy / "models/final/tokenizer.json"))
    tok.save(str(copy / "models/final/tokenizer.json"), pretty=False)
    assert _sha(copy / "models/final/tokenizer.json") != _sha(copy / "data/tokenizer/tokenizer.json")
    assert run_stage("evaluate", make_params(copy, "evaluate.checkpoints=none"))["val_loss"] > 0


# ---- bad input ---------------------------------------------------------------------------------

def _refusal(root: Path, *overrides: str) -> str:
    """The evaluate stage's error, once it wrote nothing that could pass for a report."""
    with pytest.raises(PipelineError) as refused:
        run_stage("evaluate", make_params(root, *overrides))
    assert not (root / "reports/eval.json").exists()
    assert not (root / "reports/summary.md").exists()
    return str(refused.value)


def test_missing_model_directory(copy):
    shutil.rmtree(copy / "models/final")
    assert re.search(r"model directory .*models/final not found", _refusal(copy))


def test_truncated_weights(copy):
    weights = copy / "models/final/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert re.search(r"models/final cannot be loaded .* corrupt", _refusal(copy))


def test_model_directory_without_a_tokenizer(copy):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (copy / "models/final" / name).unlink()
    assert re.search(r"no tokenizer in .*models/final \(none of tokenizer.json", _refusal(copy))


def test_missing_config(copy):
    (copy / "models/final/config.json").unlink()
    assert re.search(r"models/final cannot be loaded", _refusal(copy))


def test_weights_missing_a_tensor(copy):
    weights = copy / "models/final/model.safetensors"
    tensors = load_file(weights)
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    assert re.search(r"lack or mis-shape 1 tensor", _refusal(copy))


def test_corrupt_checkpoint(copy):
    (copy / "checkpoints/step-000002/model.safetensors").write_bytes(b"not safetensors")
    assert re.search(r"checkpoint .*step-000002 is corrupt .*model.safetensors does not match its sha256",
                     _refusal(copy))


def test_checkpoint_listed_but_missing(copy):
    shutil.rmtree(copy / "checkpoints/step-000002")
    assert re.search(r"manifest.json lists step-000002 but .* is missing", _refusal(copy))


def test_tokenizer_not_matching_the_token_files(copy):
    other = _tokenizer(["completely different words here"] * 50 + TEXTS[:1], vocab=320)
    other.save_pretrained(copy / "models/final")
    assert re.search(r"tokenizer in .*models/final does not match the token files' tokenizer .*model", _refusal(copy))


def test_stale_data_tokenizer(copy):
    path = copy / "data/tokenizer/tokenizer.json"
    path.write_text(path.read_text() + " ")
    other = _tokenizer(TEXTS[:2] * 50, vocab=300)
    other.save_pretrained(copy / "models/final")
    assert re.search(r"is not the tokenizer the token files were made with", _refusal(copy))


def test_empty_val_split(copy):
    write_tokens(copy / "data/tokens/val.bin", np.zeros(0, dtype=np.uint16))
    manifest = json.loads((copy / "data/tokens/manifest.json").read_text())
    (copy / "data/tokens/manifest.json").write_text(json.dumps({**manifest, "val_tokens": 0, "val_bytes": 0}))
    assert re.search(r"val split .*val.bin is empty: raise data.val_fraction", _refusal(copy))


def test_val_file_not_matching_the_manifest(copy):
    write_tokens(copy / "data/tokens/val.bin", np.ones(5, dtype=np.uint16))
    assert re.search(r"holds 5 tokens but .*manifest.json says", _refusal(copy))


def test_prompt_that_encodes_to_nothing(copy):
    assert re.search(r"evaluate.prompts\[1\] \(''\) encodes to no tokens",
                     _refusal(copy, 'evaluate.prompts=["Bakı", ""]'))


def test_a_prompt_longer_than_the_context_is_cut_from_the_left(world):
    net = loading.load_model(world / "models/final", torch.device("cpu"))
    tok = loading.load_tokenizer(world / "models/final")
    params = make_params(world)
    prompt = " ".join(PROMPTS * 40)
    ids = loading.encode_prompts(tok, [prompt])
    assert len(ids[0]) > loading.positions(net)
    samples = sampling.generate_samples(net, tok, [prompt], ids, 0, params.evaluate, torch.device("cpu"))
    assert samples[0]["new_tokens"] > 0


def test_context_longer_than_the_model(copy):
    assert re.search(r"model.context \(64\) exceeds the 32 positions", _refusal(copy, "model.context=64"))


def test_a_model_of_another_shape_than_params_model(copy):
    """Stages run by hand out of order: a 2-layer model, params now saying 4."""
    refusal = _refusal(copy, "model.n_layer=4")
    assert "model.n_layer gives num_hidden_layers 4, the model has 2" in refusal and "\n" not in refusal, refusal


def test_samples_longer_than_the_model(copy):
    assert re.search(r"evaluate.max_new_tokens \(31\) leaves no room", _refusal(copy, "evaluate.max_new_tokens=31"))


def test_cli_reports_bad_input_in_one_line_with_exit_code_2(copy, capsys):
    shutil.rmtree(copy / "models/final")
    sets = [a for s in make_params(copy).paths.model_dump(mode="json").items() if s[1] is not None
            for a in ("--set", f"paths.{s[0]}={s[1]}")]
    code = main(["evaluate", "--params", str(Path(__file__).parents[1] / "params.yaml"), *sets])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: model directory") and err.count("\n") == 1


# ---- with the tokenize stage's real output -----------------------------------------------------

def test_on_the_demo_tokens_as_the_train_stage_saves_a_model(demo_tokens, tmp_path):
    params = demo_tokens.with_paths(tmp_path, "reports", "checkpoints", "model")
    manifest = demo_tokens.manifest
    torch.manual_seed(0)
    tiny = P.Model(architecture="gpt2", n_layer=2, n_embd=32, n_head=2, context=params.model.context, dropout=0.0)
    params = params.model_copy(update={"model": tiny})
    build_model(tiny, manifest["vocab_size"], manifest["eot_token_id"]).save_pretrained(params.paths.model)
    AutoTokenizer.from_pretrained(params.paths.tokenizer).save_pretrained(params.paths.model)
    result = run_stage("evaluate", params)
    assert result["val_tokens_scored"] == manifest["val_tokens"] - (
        np.asarray(read_tokens(params.paths.tokens / "val.bin")[:1]) == manifest["eot_token_id"]).sum()
    # a fresh GPT-2 init predicts almost uniformly: ln(vocab) nats per token
    assert result["val_loss"] == pytest.approx(math.log(manifest["vocab_size"]), abs=0.05)
    assert result["unigram"]["val_loss"] < result["val_loss"]
    assert "## Samples" in (params.paths.reports / "summary.md").read_text(encoding="utf-8")
