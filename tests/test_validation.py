"""pipeline.engine.validation: the validation loss is the mean cross-entropy over the fixed subset,
whatever the micro-batch or the number of processes sharing it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.data.batches import stack_windows, val_starts
from pipeline.data.tokens import VAL_FILE, read_tokens
from pipeline.engine.validation import Validation
from pipeline.model.build import build_model


def test_the_loss_is_the_mean_over_the_subset_and_the_shares_add_up(demo_tokens):
    params, vocab = demo_tokens.params, demo_tokens.manifest["vocab_size"]
    model_params = params.model.model_copy(update={"n_layer": 1, "n_embd": 32, "n_head": 2, "context": 16})
    torch.manual_seed(0)
    model = build_model(model_params, vocab, demo_tokens.manifest["eot_token_id"])
    val = params.paths.tokens / VAL_FILE
    x, y = stack_windows(read_tokens(val), val_starts(val, 16, 10), 16)
    with torch.no_grad():
        expected = F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten()).item()

    cpu = torch.device("cpu")
    assert abs(Validation(val, 16, 10, micro_batch_size=3).loss(model, cpu, "fp32") - expected) < 1e-5
    shares = [Validation(val, 16, 10, 4, rank=rank, world=2) for rank in (0, 1)]
    sums = [torch.zeros(2, dtype=torch.float64)]

    def keep(share):  # what the all-reduce sees: each process's (loss sum, tokens)
        sums.append(share)
        return share

    for share in shares:
        share.loss(model, cpu, "fp32", reduce=keep)
    loss_sum, count = sum(sums).tolist()
    assert count == 10 * 16 and abs(loss_sum / count - expected) < 1e-5
    assert model.training  # left as training needs it
