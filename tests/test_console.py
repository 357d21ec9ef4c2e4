"""Output that never raises (pipeline/core/console.py), and the train stage interrupted while its
stdout and stderr are a pipe nobody reads any more: the `| tee` a Ctrl-C kills first."""
from __future__ import annotations

import io
import signal
import subprocess
import time

from pipeline.core import console
from trainkit import ROOT, cli, env, manifest


class Broken(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_or_closed_stream_is_dropped_and_the_copy_kept():
    copy = io.StringIO()
    out = console.NeverRaises(Broken(), copy)
    assert out.write("one\n") == 4 and out.write("two\n") == 4
    out.flush()
    assert copy.getvalue() == "one\ntwo\n"
    closed = io.StringIO()
    closed.close()
    console.NeverRaises(closed).write("nowhere\n")   # ValueError: I/O operation on closed file


def test_the_log_is_emptied_by_the_launcher_and_appended_to_by_its_workers(tmp_path, monkeypatch):
    log = tmp_path / "logs" / "train.log"
    log.parent.mkdir()
    log.write_text("an earlier run\n")
    for append, line in ((False, "launcher\n"), (True, "worker\n")):
        monkeypatch.setattr("sys.stdout", io.StringIO())
        console.install(log, append=append)
        print(line, end="")
    assert log.read_text() == "launcher\nworker\n"


def test_an_interrupt_checkpoints_when_the_output_pipe_is_gone(demo_tokens, tmp_path):
    args = cli(demo_tokens, tmp_path, "train.max_steps=100000", "train.checkpoint_every=1000",
               "train.eval_every=1000", "train.log_every=1")
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.close()   # the reader dies first, as tee does on Ctrl-C
    loss = tmp_path / "reports" / "train_live" / "plots" / "metrics" / "train" / "loss.tsv"
    deadline = time.monotonic() + 300
    while not (loss.exists() and len(loss.read_text().splitlines()) > 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.returncode
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    step = int(manifest(tmp_path)["latest"].removeprefix("step-"))
    assert 3 <= step < 1000
