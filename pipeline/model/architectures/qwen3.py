"""qwen3: Qwen3ForCausalLM, the rotary decoder (pipeline/model/rotary.py) with QK-norm: an RMSNorm
on every head's queries and keys; no biases, no sliding window."""
from __future__ import annotations

from transformers import Qwen3Config, Qwen3ForCausalLM

from pipeline.model.rotary import RotaryDecoder, rotary_decoder

SPEC = rotary_decoder(RotaryDecoder("qwen3", Qwen3ForCausalLM, Qwen3Config, qk_norm=True,
                                    config_extra={"use_sliding_window": False}))
