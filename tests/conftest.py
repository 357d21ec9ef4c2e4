"""Shared fixtures.

`demo_tokens` (session scope): the bundled demo corpus, generated into a temporary directory and
tokenized with params.yaml + params/demo.yaml, exactly as `make demo` does, but with every path
(corpus, tokenizer, tokens, reports, checkpoints, model) inside that directory so tests never
write into the repository. Built once per test session (~10 s on 2 cores). Use it as:

    def test_something(demo_tokens):
        params = demo_tokens.params                # Params with the tmp paths
        ids = read_tokens(params.paths.tokens / "train.bin")
        manifest = demo_tokens.manifest           # data/tokens/manifest.json, as a dict

Treat its files as read-only (they are shared by every test of the session): copy what you
modify, or derive new paths with `demo_tokens.with_paths(tmp_path, "reports", "checkpoints")`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.registry import run_stage
from pipeline.tools import demo_corpus
from pipeline.core import params as params_module
from pipeline.stages import tokenize

ROOT = Path(__file__).resolve().parent.parent
DEMO_PARAMS = [ROOT / "params.yaml", ROOT / "params" / "demo.yaml"]

# Tests never reach the network: a stray hub download fails fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    # The detected CPU entry measures this machine once and caches it outside the repository:
    # tests measure into a cache of their own, never the user's (~/.cache/budgetgpt).
    if "BUDGETGPT_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["BUDGETGPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="budgetgpt-cache-")


@dataclass(frozen=True)
class DemoTokens:
    params: params_module.Params   # params.yaml + params/demo.yaml, paths under `root`
    root: Path
    manifest: dict

    def with_paths(self, base: Path, *names: str) -> params_module.Params:
        """The same params with the named paths.* moved under `base` (for outputs a test writes)."""
        paths = self.params.paths.model_copy(update={name: Path(base) / name for name in names})
        return self.params.model_copy(update={"paths": paths})


def demo_params(root: Path, *overrides: str) -> params_module.Params:
    """params.yaml + params/demo.yaml with every output path under `root`."""
    paths = {"corpus": "demo", "clean": "clean", "tokenizer": "tokenizer", "tokens": "tokens", "reports": "reports",
             "checkpoints": "checkpoints", "model": "model"}
    sets = [f"paths.{key}={root / value}" for key, value in paths.items()]
    return params_module.load(DEMO_PARAMS, sets + list(overrides))


@pytest.fixture(scope="session")
def demo_tokens(tmp_path_factory) -> DemoTokens:
    root = tmp_path_factory.mktemp("demo")
    params = demo_params(root)
    demo_corpus.write(params.paths.corpus, demo_corpus.generate())
    run_stage("clean", params)
    manifest = run_stage("tokenize", params).as_dict()
    return DemoTokens(params=params, root=root, manifest=manifest)


# How `make test` spreads the files over its workers (pytest-xdist --dist loadfile, each file whole
# on one worker, in this order). On 2 workers (CI: 2 cores) the longest end-to-end files are one unit
# of work, run one after another on one worker while the other runs the rest: two trainings at once
# each start a thread per core and slow each other, and a long file started last runs alone at the
# end. Seconds per file on 2 cores, for the order: drivers_snakemake ~450, slurm ~420, interrupts
# ~380, drivers_dvc ~280, reclaim ~280, the rest under 110 each (bench/README.md, "The test suite").
ONE_WORKER = ("test_drivers_snakemake.py", "test_interrupts.py", "test_slurm.py", "test_drivers_dvc.py")
LONG_NEXT = ("test_reclaim.py", "test_drivers_snakemake_devices.py", "test_guard.py", "test_drivers_new_stage.py")


@pytest.hookimpl(optionalhook=True)   # a pytest-xdist hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with ONE_WORKER's files one unit on 2 workers. (xdist_group markers would
    say the same, but pytest-xdist 3.8 cannot attach them under pytest 9.2: their nodeid suffix is
    lost.)"""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    workers = len(config.getoption("tx"))

    class LongFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return "end-to-end" if workers <= 2 and Path(scope).name in ONE_WORKER else scope

    return LongFilesTogether(config, log)


def pytest_collection_modifyitems(config, items):
    order = {name: rank for rank, name in enumerate(ONE_WORKER + LONG_NEXT)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))   # stable: each file's own order kept
    _skip_cuda_without_gpu(items)


def _skip_cuda_without_gpu(items) -> None:
    """Tests marked cuda skip, saying why, where torch sees no GPU (CI, most laptops)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is false here")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server on a free local port: `env` is what a client (s3fs, boto3, dvc-s3) needs."""
    endpoint: str
    env: dict

    def bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_s3_keys(self.env)).create_bucket(Bucket=name)
        return name


def _s3_keys(env: dict) -> dict:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server over HTTP (moto[server], pinned in requirements.lock as a test
    dependency), for the remote checkpoints and `dvc push`. Its environment is set in this process
    for the session (s3fs and boto3 read AWS_ENDPOINT_URL) and handed to subprocesses via `env`."""
    import shutil
    import socket
    import subprocess
    import sys
    import time

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server is not installed: pip install -r requirements.lock (it pins moto[server])")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on port {port}")
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield S3Server(env["AWS_ENDPOINT_URL"], env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        proc.wait(timeout=30)
