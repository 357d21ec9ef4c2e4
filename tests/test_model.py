"""pipeline.model.build: GPT-2 or Qwen3 from params, no download, ids from our tokenizer, tied or untied head."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.core import params as params_module
from pipeline.core.errors import PipelineError
from pipeline.model.build import build_model, count_parameters, mlp_width

TINY = params_module.Model(architecture="gpt2", n_layer=2, n_embd=64, n_head=4, context=32, dropout=0.0)
QWEN3 = TINY.model_copy(update={"architecture": "qwen3"})


def expected_parameters(m: params_module.Model, vocab: int) -> int:
    d = m.n_embd
    per_layer = 12 * d * d + 13 * d  # attention qkv + proj, MLP 4x, two LayerNorms, biases
    return m.n_layer * per_layer + vocab * d + m.context * d + 2 * d  # wte (tied), wpe, ln_f


def expected_qwen3_parameters(m: params_module.Model, vocab: int) -> int:
    d, hd, w = m.n_embd, m.n_embd // m.n_head, mlp_width(m)
    per_layer = 4 * d * d + 3 * d * w + 2 * d + 2 * hd  # q, k, v, o; gate, up, down; two RMSNorms; QK-norm
    return m.n_layer * per_layer + vocab * d * (1 if m.tie_embeddings else 2) + d  # embeddings (+ head), norm


def test_config_follows_params_and_tokenizer_ids():
    model = build_model(TINY, vocab_size=300, eos_token_id=7)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_positions, c.vocab_size) == (2, 64, 4, 32, 300)
    assert c.bos_token_id == c.eos_token_id == 7  # not GPT2Config's 50256
    assert c.activation_function == "gelu_pytorch_tanh" and c.n_inner is None
    assert model.config._attn_implementation == "sdpa"
    assert model.lm_head.weight is model.transformer.wte.weight


def test_qwen3_config_follows_params():
    model = build_model(QWEN3.model_copy(update={"rope_theta": 5e5}), vocab_size=300, eos_token_id=7)
    c = model.config
    assert c.model_type == "qwen3" and type(model).__name__ == "Qwen3ForCausalLM"
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
            c.max_position_embeddings, c.vocab_size) == (2, 64, 4, 4, 16, 32, 300)
    assert c.bos_token_id == c.eos_token_id == 7
    assert c.hidden_act == "silu" and c.intermediate_size == 192  # 8/3 x 64 = 170.7, up to a multiple of 64
    assert c.rope_parameters["rope_theta"] == 5e5 and not c.use_sliding_window
    assert c._attn_implementation == "sdpa"
    layer = model.model.layers[0]
    assert layer.self_attn.q_norm.weight.shape == (16,)  # QK-norm on every head
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))  # no biases
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_activation_and_width_are_params():
    relu2 = build_model(QWEN3.model_copy(update={"mlp_activation": "relu2", "mlp_width": 96}), 300, 0)
    assert (relu2.config.hidden_act, relu2.config.intermediate_size) == ("relu2", 96)
    gpt2 = build_model(TINY.model_copy(update={"mlp_activation": "relu2", "mlp_width": 96}), 300, 0)
    assert (gpt2.config.activation_function, gpt2.transformer.h[0].mlp.c_fc.weight.shape) == ("relu2", (64, 96))


def test_qwen3_needs_an_even_head_dimension():
    """Params load it (they must not import an architecture); building it is refused, naming the keys."""
    odd = params_module.load(["params.yaml"], ["model.architecture=qwen3", "model.n_embd=60", "model.n_head=4"]).model
    with pytest.raises(PipelineError, match=r"model.n_embd / model.n_head \(15\) must be even"):
        build_model(odd, vocab_size=300, eos_token_id=0)


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_counts_a_tied_matrix_once(tied):
    gpt2 = build_model(TINY.model_copy(update={"tie_embeddings": tied}), vocab_size=300, eos_token_id=0)
    assert count_parameters(gpt2) == expected_parameters(TINY, 300) + (0 if tied else 300 * 64)
    assert (gpt2.lm_head.weight is gpt2.transformer.wte.weight) == tied
    m = QWEN3.model_copy(update={"tie_embeddings": tied})
    qwen3 = build_model(m, vocab_size=300, eos_token_id=0)
    assert count_parameters(qwen3) == expected_qwen3_parameters(m, 300)


def test_gpt2_small_has_124m_parameters():
    gpt2 = params_module.load(["params.yaml"], ["model.architecture=gpt2"]).model
    model = build_model(gpt2, vocab_size=50257, eos_token_id=50256)
    assert count_parameters(model) == expected_parameters(gpt2, 50257) == 124_439_808


def test_the_default_is_a_gpt2_small_sized_qwen3():
    """params.yaml's model: Qwen3 blocks at GPT-2 small's shape, within 1% of its parameters."""
    default = params_module.load(["params.yaml"]).model
    model = build_model(default, vocab_size=50257, eos_token_id=50256)
    assert model.config.model_type == "qwen3"
    assert count_parameters(model) == expected_qwen3_parameters(default, 50257) == 123_552_768


@pytest.mark.parametrize("model", [TINY, QWEN3, QWEN3.model_copy(update={"tie_embeddings": False})],
                         ids=["gpt2", "qwen3", "qwen3-untied"])
def test_same_seed_same_weights_and_a_save_pretrained_round_trip(tmp_path, model):
    torch.manual_seed(3)
    a = build_model(model, 300, 0)
    torch.manual_seed(3)
    b = build_model(model, 300, 0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    a.save_pretrained(tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True, output_loading_info=True)
    assert type(loaded) is type(a) and not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.allclose(a.eval()(x).logits, loaded.eval()(x).logits)
    tied = loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    assert tied == model.tie_embeddings
    out = loaded.generate(x[:1, :4], attention_mask=torch.ones_like(x[:1, :4]), max_new_tokens=5, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    assert out.shape == (1, 9)
