"""llama: LlamaForCausalLM, the rotary decoder (pipeline/model/rotary.py) as Llama has it (Touvron
et al., arXiv:2302.13971): no QK-norm, no biases."""
from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.model.rotary import RotaryDecoder, rotary_decoder

SPEC = rotary_decoder(RotaryDecoder("llama", LlamaForCausalLM, LlamaConfig))
