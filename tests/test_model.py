"""pipeline.model: GPT-2 from params, no download, ids from our tokenizer, tied embeddings."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from pipeline import params as params_module
from pipeline.model import build_model, count_parameters

TINY = params_module.Model(n_layer=2, n_embd=64, n_head=4, context=32, dropout=0.0)


def expected_parameters(m: params_module.Model, vocab: int) -> int:
    d = m.n_embd
    per_layer = 12 * d * d + 13 * d  # attention qkv + proj, MLP 4x, two LayerNorms, biases
    return m.n_layer * per_layer + vocab * d + m.context * d + 2 * d  # wte (tied), wpe, ln_f


def test_config_follows_params_and_tokenizer_ids():
    model = build_model(TINY, vocab_size=300, eos_token_id=7)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size) == (2, 64, 4, 32, 300)
    assert c.bos_token_id == c.eos_token_id == 7  # not GPT2Config's 50256
    assert model.config._attn_implementation == "sdpa"
    assert model.lm_head.weight is model.transformer.wte.weight


def test_parameter_count_counts_the_tied_matrix_once():
    model = build_model(TINY, vocab_size=300, eos_token_id=0)
    assert count_parameters(model) == expected_parameters(TINY, 300)


def test_gpt2_small_has_124m_parameters():
    gpt2 = params_module.load(["params.yaml"]).model
    model = build_model(gpt2, vocab_size=50257, eos_token_id=50256)
    assert count_parameters(model) == expected_parameters(gpt2, 50257) == 124_439_808


def test_same_seed_same_weights_and_a_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(3)
    a = build_model(TINY, 300, 0)
    torch.manual_seed(3)
    b = build_model(TINY, 300, 0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    a.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.allclose(a.eval()(x).logits, loaded.eval()(x).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
