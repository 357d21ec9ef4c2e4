"""evaluate beyond the val split: bits per byte on reference texts and lm-eval tasks read from local
files, on the tiny real model of test_evaluate.py, with the network blocked."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.__main__ import main
from test_evaluate import make_params, make_world

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 32   # the tiny model's positions: lm-eval's windows are model.context long
REFERENCE = ("Azərbaycan Respublikası Cənubi Qafqazda yerləşir.\nBakı şəhəri Xəzər dənizinin sahilindədir.\n"
             "Machine learning is the study of programs that improve with data.\n")
BELEBELE_AZ = [("Bakı Xəzər sahilindədir.", "Bakı harada yerləşir?", ["Xəzər sahilində", "Dağda", "Səhrada", "Adada"], "1"),
               ("Hava çox gözəldir.", "Hava necədir?", ["Pis", "Gözəl", "Soyuq", "Yağışlı"], "2"),
               ("Paytaxt Bakıdır.", "Paytaxt hansıdır?", ["Gəncə", "Şəki", "Bakı", "Quba"], "3")]
BELEBELE_EN = [("Models predict pieces.", "What do models predict?", ["Pieces", "Rain", "Cats", "Songs"], "1"),
               ("Learning is long.", "What is long?", ["Rope", "Learning", "Night", "Road"], "2")]
PIQA_ITEM = {"goal": "Bake bread", "sol1": "use heat", "sol2": "use ice", "label": 0}
GLOBAL_PIQA_AZ = [{"prompt": "Çörək bişirmək üçün", "solution0": "sobadan istifadə et.", "solution1": "buz qoy.", "label": 0},
                  {"prompt": "Çay dəmləmək üçün", "solution0": "soyuq su tök.", "solution1": "qaynar su tök.", "label": 1}]
# INCLUDE's Azerbaijani exams: its group's six tasks each keep one domain of the same rows
INCLUDE_DOMAINS = ["Business & Commerce", "Applied Science", "Arts & Humanities", "Social Science", "STEM",
                   "Health oriented education"]
INCLUDE_AZ = [{"question": f"Sual {i}?", "option_a": "bir", "option_b": "iki", "option_c": "üç", "option_d": "dörd",
               "answer": i % 4, "domain": domain} for i, domain in enumerate(INCLUDE_DOMAINS * 2)]
TASKS = {"belebele_azj_Latn": "belebele/azj_Latn.jsonl",            # a .jsonl file of the scored split
         "belebele_eng_Latn": "belebele-repo",                      # a dataset repository directory
         "global_piqa_nonparallel_cloze_azj_latn": "gpiqa/azj.parquet",
         "piqa": "piqa/validation.csv",
         "include_base_44_azerbaijani": "include/azerbaijani.jsonl"}   # a group, one file for its tasks


def _belebele_rows(items, dialect):
    return [{"link": f"l{i}", "question_number": 1, "flores_passage": p, "question": q,
             **{f"mc_answer{k + 1}": a for k, a in enumerate(answers)}, "correct_answer_num": right,
             "dialect": dialect} for i, (p, q, answers, right) in enumerate(items)]


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_eval_data(root: Path) -> Path:
    """Task files in each supported form, and a reference text, as eval/README.md lays them out."""
    data = root / "eval"
    (data / "ref").mkdir(parents=True)
    (data / "ref/az.txt").write_text(REFERENCE, encoding="utf-8")
    _jsonl(data / "belebele/azj_Latn.jsonl", _belebele_rows(BELEBELE_AZ, "azj_Latn"))
    _jsonl(data / "belebele-repo/data/eng_Latn.jsonl", _belebele_rows(BELEBELE_EN, "eng_Latn"))
    (data / "belebele-repo/README.md").write_text(   # the Hub repository's card declares its configs
        "---\nconfigs:\n- config_name: eng_Latn\n  data_files:\n  - split: test\n    path: data/eng_Latn.jsonl\n---\n")
    _jsonl(data / "include/azerbaijani.jsonl", INCLUDE_AZ)
    (data / "gpiqa").mkdir()
    pd.DataFrame(GLOBAL_PIQA_AZ).to_parquet(data / "gpiqa/azj.parquet")
    (data / "piqa").mkdir()
    pd.DataFrame([PIQA_ITEM]).to_csv(data / "piqa/validation.csv", index=False)
    return data


def _sets(root: Path, *extra: str) -> list[str]:
    """The CLI's --set arguments for the world under `root`."""
    params = make_params(root, f"paths.eval_data={root / 'eval'}")
    sets = [f"paths.{k}={v}" for k, v in params.paths.model_dump(mode="json").items() if v is not None]
    sets += [f"model.{k}={getattr(params.model, k)}" for k in ("architecture", "n_layer", "n_embd", "n_head")]
    sets += [f"model.context={CONTEXT}", "evaluate.batch_size=3", "evaluate.max_new_tokens=8",
             "evaluate.checkpoints=none", "train.device=cpu", "train.tokens_per_step=1024", *extra]
    return [a for s in sets for a in ("--set", s)]


# Blocks every internet socket of the process that imports it, and records each attempt.
_NO_NETWORK = """
import os, socket
def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_ATTEMPTS"], "a") as log:
        log.write(repr(args[1:])[:200] + "\\n")
    raise OSError("network blocked by the test")
_connect = socket.socket.connect
def _connect_local(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        return _refuse(self, address)
    return _connect(self, address)
socket.socket.connect = _connect_local
socket.getaddrinfo = _refuse
"""


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The evaluate stage run as a user runs it (a process of its own), network blocked."""
    root = make_world(tmp_path_factory.mktemp("beyond"))
    make_eval_data(root)
    blocker = root / "no_network"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_NO_NETWORK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "NETWORK_ATTEMPTS": str(root / "attempts.log"), "OMP_NUM_THREADS": "1"}
    sets = _sets(root, f"evaluate.reference_texts={json.dumps({'az': 'ref/az.txt'})}",
                 f"evaluate.tasks={json.dumps(TASKS)}")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "evaluate", "--params", str(ROOT / "params.yaml"), *sets],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root / "stdout.txt").write_text(proc.stdout, encoding="utf-8")
    return root


def test_no_network_is_touched(evaluated):
    attempts = evaluated / "attempts.log"
    assert not attempts.exists(), f"evaluate tried the network: {attempts.read_text()[:500]}"


def test_bits_per_byte_of_a_reference_text_is_the_direct_computation(evaluated):
    """One forward pass per window of CONTEXT predictions, written out here: every token of
    end-of-text + text predicted once, nats summed, over the text's UTF-8 bytes."""
    ref = json.loads((evaluated / "reports/eval.json").read_text())["reference_texts"]["az"]
    net = AutoModelForCausalLM.from_pretrained(evaluated / "models/final").eval()
    tok = AutoTokenizer.from_pretrained(evaluated / "models/final")
    ids = [tok.convert_tokens_to_ids("<|endoftext|>")] + tok(REFERENCE, add_special_tokens=False)["input_ids"]
    nats = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, CONTEXT):
            window = torch.tensor([ids[start:start + CONTEXT + 1]])
            logp = F.log_softmax(net(window[:, :-1]).logits.double(), -1)
            nats -= logp[0].gather(1, window[0, 1:, None]).sum().item()
    assert ref["tokens"] == len(ids) - 1 and ref["bytes"] == len(REFERENCE.encode("utf-8"))
    assert ref["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(REFERENCE.encode("utf-8")), rel=1e-5)


def _loglikelihood(net, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) as lm-eval scores a causal model: the pair encoded whole and
    split at the context's length, at most CONTEXT tokens of input."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    n_context = len(tok(context, add_special_tokens=False)["input_ids"])
    inputs = torch.tensor([whole[-(CONTEXT + 1):][:-1]])
    n_cont = len(whole) - n_context
    with torch.no_grad():
        logp = F.log_softmax(net(inputs).logits.double(), -1)[0, -n_cont:]
    return logp.gather(1, torch.tensor(whole[-n_cont:])[:, None]).sum().item()


def test_one_items_score_is_the_hand_computation_of_its_loglikelihoods(evaluated):
    """piqa's one item: 'Question: GOAL\\nAnswer:' then ' SOL'; acc picks the likelier solution,
    acc_norm the likelier per character."""
    piqa = json.loads((evaluated / "reports/eval.json").read_text())["tasks"]["piqa"]
    net = AutoModelForCausalLM.from_pretrained(evaluated / "models/final").eval()
    tok = AutoTokenizer.from_pretrained(evaluated / "models/final")
    context = f"Question: {PIQA_ITEM['goal']}\nAnswer:"
    sols = [PIQA_ITEM["sol1"], PIQA_ITEM["sol2"]]
    lls = [_loglikelihood(net, tok, context, " " + s) for s in sols]
    assert lls[0] != lls[1]
    assert piqa["n"] == 1 and piqa["chance"] == 0.5
    assert piqa["metrics"]["acc"]["value"] == float(max(range(2), key=lambda i: lls[i]) == PIQA_ITEM["label"])
    by_char = [ll / len(s) for ll, s in zip(lls, sols)]
    assert piqa["metrics"]["acc_norm"]["value"] == float(max(range(2), key=lambda i: by_char[i]) == PIQA_ITEM["label"])


def test_each_task_reports_metric_error_n_and_chance(evaluated):
    tasks = json.loads((evaluated / "reports/eval.json").read_text())["tasks"]
    assert set(tasks) == set(TASKS)
    assert {name: (t["n"], t["chance"]) for name, t in tasks.items()} == {
        "belebele_azj_Latn": (3, 0.25), "belebele_eng_Latn": (2, 0.25),
        "global_piqa_nonparallel_cloze_azj_latn": (2, 0.5), "piqa": (1, 0.5), "include_base_44_azerbaijani": (12, 0.25)}
    assert tasks["include_base_44_azerbaijani"]["kind"] == "group"
    assert len(tasks["include_base_44_azerbaijani"]["num_fewshot"]) == len(INCLUDE_DOMAINS)
    for name, task in tasks.items():
        assert set(task["metrics"]) == ({"acc"} if name.startswith("include") else {"acc", "acc_norm"}), name
        for m in task["metrics"].values():
            assert 0 <= m["value"] <= 1 and (m["stderr"] is None) == (task["n"] == 1)   # lm-eval: N/A for one item
            z = (m["value"] - task["chance"]) / (math.sqrt(task["chance"] * (1 - task["chance"]) / task["n"]))
            assert m["z_vs_chance"] == pytest.approx(z)
            assert m["vs_chance"] == ("above chance" if z >= 1.96 else "below chance" if z <= -1.96
                                      else "not distinguishable from chance")


def test_metrics_json_and_summary_show_them(evaluated):
    result = json.loads((evaluated / "reports/eval.json").read_text())
    metrics = json.loads((evaluated / "reports/metrics.json").read_text())
    assert metrics["az_bits_per_byte"] == result["reference_texts"]["az"]["bits_per_byte"]
    for name, task in result["tasks"].items():
        for metric, m in task["metrics"].items():
            assert metrics[f"{name}_{metric}"] == m["value"]
            assert metrics.get(f"{name}_{metric}_stderr") == m["stderr"]   # left out where not measured
    summary = (evaluated / "reports/summary.md").read_text()
    assert f"| az (`{evaluated / 'eval/ref/az.txt'}`) |" in summary
    assert f"{result['reference_texts']['az']['bits_per_byte']:.4f}" in summary
    bele = result["tasks"]["belebele_azj_Latn"]
    acc = bele["metrics"]["acc"]
    assert (f"| belebele_azj_Latn | acc | {acc['value']:.1%} | {acc['stderr']:.1%} | 3 | 25.0% | "
            f"{acc['vs_chance']} |") in summary
    said = (evaluated / "stdout.txt").read_text(encoding="utf-8")   # and the stage says them
    assert f"az: {result['reference_texts']['az']['bits_per_byte']:.4f} bits/byte" in said
    assert f"belebele_azj_Latn acc: {acc['value']:.1%} ± {acc['stderr']:.1%} over 3 items, {acc['vs_chance']}" in said


# ---- bad input: one line, exit 2, before the model loads ---------------------------------------

@pytest.fixture
def broken_model_world(tmp_path):
    """A world whose model weights are gone: a refusal that names the eval data, not the model,
    came before the model was loaded."""
    root = make_world(tmp_path)
    make_eval_data(root)
    (root / "models/final/model.safetensors").unlink()
    return root


def _refusal(root: Path, capsys, *extra: str) -> str:
    code = main(["evaluate", "--params", str(ROOT / "params.yaml"), *_sets(root, *extra)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert not (root / "reports/eval.json").exists()
    return err


def test_missing_reference_text(broken_model_world, capsys):
    err = _refusal(broken_model_world, capsys, 'evaluate.reference_texts={"flores_azj": "flores/azj_Latn.devtest"}')
    assert f"evaluate.reference_texts.flores_azj: {broken_model_world / 'eval/flores/azj_Latn.devtest'} not found" in err


def test_missing_task_file(broken_model_world, capsys):
    err = _refusal(broken_model_world, capsys, 'evaluate.tasks={"piqa": "piqa/train.jsonl"}')
    assert f"evaluate.tasks.piqa: {broken_model_world / 'eval/piqa/train.jsonl'} not found" in err


def test_unknown_task_names_the_closest(broken_model_world, capsys):
    err = _refusal(broken_model_world, capsys, 'evaluate.tasks={"belebele_azj_latn": "belebele/azj_Latn.jsonl"}')
    assert "evaluate.tasks: lm-eval has no task or group 'belebele_azj_latn'" in err
    assert "belebele_azj_Latn" in err


def test_task_file_without_the_columns_its_config_reads(broken_model_world, capsys):
    err = _refusal(broken_model_world, capsys, 'evaluate.tasks={"piqa": "gpiqa/azj.parquet"}')
    assert f"evaluate.tasks.piqa: lm-eval cannot read {broken_model_world / 'eval/gpiqa/azj.parquet'}" in err


def test_paths_outside_eval_data_are_refused(broken_model_world, capsys):
    """DVC tracks paths.eval_data: a file elsewhere could change without rerunning evaluate. (A
    params problem: listed with every other one, as params.py reports them.)"""
    code = main(["evaluate", "--params", str(ROOT / "params.yaml"),
                 *_sets(broken_model_world, 'evaluate.reference_texts={"x": "../data/tokens/manifest.json"}')])
    err = capsys.readouterr().err
    assert code == 2 and "evaluate.reference_texts: x: ../data/tokens/manifest.json must be a path inside paths.eval_data" in err
