"""Training windows: a seeded permutation per epoch, the same sequences whatever the layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.batches import TrainWindows, val_starts
from pipeline.core.errors import PipelineError
from pipeline.data.tokens import write_tokens


def test_windows_cover_an_epoch_once_and_do_not_depend_on_the_layout(demo_tokens):
    path = demo_tokens.params.paths.tokens / "train.bin"
    windows = TrainWindows(path, context=1024, seqs_per_step=24, seed=5)
    per_epoch = -(-windows.windows // 24)  # steps that cover one epoch
    starts = np.concatenate([windows.starts(s, 0, 24) for s in range(per_epoch)])[:windows.windows]
    assert sorted(starts) == list(np.arange(windows.windows) * 1024)  # every window once, none twice
    one = np.concatenate([windows.batch(3, m, 0, 1, 4)[0] for m in range(6)])
    two = np.concatenate([windows.batch(3, m, r, 2, 3)[0] for m in range(4) for r in range(2)])
    assert sorted(map(tuple, one.tolist())) == sorted(map(tuple, two.tolist()))
    x, y = windows.batch(3, 0, 0, 1, 4)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one token
    other = TrainWindows(path, context=1024, seqs_per_step=24, seed=6)
    assert not np.array_equal(other.starts(0, 0, 24), windows.starts(0, 0, 24))


def test_val_windows_are_a_fixed_spread_and_a_short_file_is_refused(tmp_path):
    path = tmp_path / "val.bin"
    write_tokens(path, np.arange(1000, dtype=np.uint16))
    assert val_starts(path, 10, 5).tolist() == [0, 190, 390, 590, 790]
    assert len(val_starts(path, 10, 10_000)) == 99  # all windows when asked for more
    write_tokens(path, np.arange(5, dtype=np.uint16))
    with pytest.raises(PipelineError, match="fewer than one window of model.context"):
        val_starts(path, 10, 1)
