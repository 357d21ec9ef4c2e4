"""Samples from the model under evaluation: one continuation per evaluate.prompts entry, the same
for the same model, seed and prompt whatever the other prompts are.

    ids = encode_prompts(tok, params.evaluate.prompts)     # pipeline/evaluation/loading.py
    generate_samples(net, tok, params.evaluate.prompts, ids, manifest["eot_token_id"], params.evaluate, device)
"""
from __future__ import annotations

import zlib
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from pipeline.core.params import Evaluate
from pipeline.evaluation.loading import positions


def generate_samples(net: PreTrainedModel, tok, prompts: list[str], prompt_ids: list[list[int]], eot: int,
                     ev: Evaluate, device: torch.device) -> list[dict[str, Any]]:
    """One sample per prompt, seeded by evaluate.seed and the prompt's own text.

    With one seed for all, prompts would share one random stream and weak models would write the
    same continuation after each; with a running stream, a sample would change when another prompt does.
    """
    room = positions(net) - ev.max_new_tokens
    gen = GenerationConfig(do_sample=True, temperature=ev.temperature, top_k=ev.top_k, top_p=1.0,
                           max_new_tokens=ev.max_new_tokens, eos_token_id=eot, pad_token_id=eot,
                           use_cache=True)
    samples = []
    for prompt, ids in zip(prompts, prompt_ids):
        context = ([eot] + ids)[-room:]  # the model saw documents begin after an end-of-text token
        inputs = torch.tensor([context], device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(ev.seed + zlib.crc32(prompt.encode("utf-8")))
            out = net.generate(inputs, attention_mask=torch.ones_like(inputs), generation_config=gen)
        new = out[0, len(context):].tolist()
        ended = eot in new
        new = new[:new.index(eot)] if ended else new
        samples.append({"prompt": prompt, "completion": tok.decode(new), "new_tokens": len(new),
                        "ended": ended})
    return samples
