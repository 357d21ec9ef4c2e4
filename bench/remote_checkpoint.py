"""What a checkpoint in a bucket costs: its bytes, the save, the upload, the verified download, and
a training step of the same model for scale.

    nice -n 10 .venv/bin/python bench/remote_checkpoint.py [--configs demo,default] [--rounds 3]

The S3 server is moto's (moto_server, from the locked environment) on this machine, over HTTP
through s3fs, as tests/test_checkpoint_remote.py uses it: it measures the client's work and the
bytes, not a cloud link; divide the bytes by your VM's bandwidth to the bucket for that. The
optimizer state is AdamW's (two buffers per weight: the most a recipe here keeps; Muon keeps one
for its matrices). Medians over rounds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.core import params as params_module  # noqa: E402
from pipeline.engine.checkpoint import store  # noqa: E402
from pipeline.engine.checkpoint.remote import RemoteCheckpoints  # noqa: E402
from pipeline.model.build import build_model  # noqa: E402

CONFIGS = {"demo": [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"], "default": [ROOT / "params.yaml"]}
VOCAB = {"demo": 4096, "default": 32000}


def moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    return proc, f"http://127.0.0.1:{port}"


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens_per_step: int, context: int, vocab: int) -> float:
    batch = torch.randint(0, vocab, (max(1, tokens_per_step // context), context))
    started = time.perf_counter()
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - started


def measure(name: str, rounds: int, work: Path) -> dict[str, float]:
    import boto3

    params = params_module.load(CONFIGS[name])
    torch.manual_seed(0)
    model = build_model(params.model, VOCAB[name], 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_seconds = [one_step(model, opt, params.train.tokens_per_step, params.model.context, VOCAB[name])
                    for _ in range(2)][-1]   # the first allocates the optimizer state
    rows = []
    for r in range(rounds):
        bucket = f"bench-{name}-{r}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        root = work / f"{name}-{r}"
        started = time.perf_counter()
        path = store.save(root, 10, model, {"optimizer": opt.state_dict()},
                          {"step": 10, "tokens": 0, "val_loss": None, "identity": {}}, {"train": [], "val": []})
        saved = time.perf_counter() - started
        remote = RemoteCheckpoints(f"s3://{bucket}/run", keep_last=2, lease_seconds=120)
        remote.open({})
        started = time.perf_counter()
        remote.upload(path)
        queued = time.perf_counter() - started
        remote.drain()
        uploaded = time.perf_counter() - started
        remote.close()
        fetcher = RemoteCheckpoints(f"s3://{bucket}/run", keep_last=2, lease_seconds=120)
        fetcher.open({})
        started = time.perf_counter()
        fetcher.download(10, work / f"{name}-{r}-fetched")
        downloaded = time.perf_counter() - started
        fetcher.close()
        rows.append({"bytes": sum(f.stat().st_size for f in path.iterdir()), "save_s": saved, "queue_s": queued,
                     "upload_s": uploaded, "download_verify_s": downloaded})
        shutil.rmtree(root)
    summary = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    return {"parameters": sum(p.numel() for p in model.parameters()), "step_s": step_seconds, **summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="demo")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    proc, endpoint = moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print("| config | parameters | checkpoint MB | save s | upload queued s | upload s | download+verify s | "
                  "one step s (CPU) |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for name in args.configs.split(","):
                m = measure(name, args.rounds, Path(tmp))
                print(f"| {name} | {m['parameters']:,} | {m['bytes'] / 1e6:.1f} | {m['save_s']:.2f} | "
                      f"{m['queue_s']:.3f} | {m['upload_s']:.2f} | {m['download_verify_s']:.2f} | {m['step_s']:.2f} |")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
