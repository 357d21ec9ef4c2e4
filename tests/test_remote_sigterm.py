"""SIGTERM (a spot VM's notice) while the uplink is slow: train checkpoints the step, waits for its
upload, and only then exits; the bucket holds that step complete. The link is slow for real: a TCP
proxy between s3fs and the S3 server (moto) that forwards the uploads at a fixed byte rate."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time

import fsspec
import pytest

from pipeline.engine.checkpoint import store
from trainkit import ROOT, cli, env

RATE = 1_000_000   # bytes per second towards the server: a checkpoint here (~4 MB) takes seconds


class SlowLink:
    """127.0.0.1:port forwards to the S3 server, requests at most RATE bytes/s."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, RATE), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, rate: int | None) -> None:
        try:
            while data := source.recv(16384):
                sink.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def test_sigterm_waits_for_the_upload_of_its_checkpoint(demo_tokens, s3_server, tmp_path):
    bucket = s3_server.bucket("sigterm")
    link = SlowLink(int(s3_server.endpoint.rsplit(":", 1)[1]))
    args = cli(demo_tokens, tmp_path, "model.architecture=gpt2", "train.optimizer=adamw", "train.max_steps=100000",
               "train.checkpoint_every=10", "train.eval_every=10", f"paths.checkpoints_remote=s3://{bucket}/run")
    slow_env = {**env(), **s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{link.port}"}
    proc = subprocess.Popen(args, cwd=ROOT, env=slow_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    index = tmp_path / "checkpoints" / "manifest.json"
    deadline = time.monotonic() + 300
    while not (index.is_file() and json.loads(index.read_text())["checkpoints"]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    waited = time.monotonic() - signalled
    link.close()
    assert proc.returncode == 128 + signal.SIGTERM, err
    step = int(re.search(r"stopped after step (\d+)", err).group(1))

    local = tmp_path / "checkpoints" / store.dirname(step)
    size = sum(f.stat().st_size for f in local.iterdir())
    assert waited >= 0.8 * size / RATE, f"exited {waited:.1f} s after SIGTERM: before a {size}-byte upload could end"
    fs, _ = fsspec.core.url_to_fs(f"s3://{bucket}")   # straight to the server, not through the slow link
    fs.invalidate_cache()
    fetched = tmp_path / "fetched" / local.name
    fs.get(f"{bucket}/run/{local.name}/", str(fetched) + "/", recursive=True)
    store.verify(fetched)   # complete: every file, its SHA256SUMS, matching
    assert sorted(p.name for p in fetched.iterdir()) == sorted(p.name for p in local.iterdir())
    print(f"\nSIGTERM at step {step}: a {size / 1e6:.1f} MB checkpoint over a {RATE / 1e6:.0f} MB/s link, "
          f"exit {waited:.1f} s after the signal")
