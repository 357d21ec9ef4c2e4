"""What a first paid run meets: the NVIDIA driver against the torch build
(pipeline/tools/cudabuilds.py), whether torch.compile runs on this GPU against the planner's
refusal, and the fp16 headroom of the demo model after training on the bundled corpus
(pipeline/tools/fp16probe.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import PipelineError
from pipeline.tools.gpucheck.configs import DEMO_OVERLAY, ROOT
from pipeline.tools.gpucheck.machine import Machine, first_line

if TYPE_CHECKING:
    from pipeline.core.params import Params

# the fp16 probe's model: the demo recipe trained on the bundled corpus, all 120 steps in fp16 on a GPU
# (seconds); on a CPU 20 steps of 1,024 tokens in fp32 (about half a minute on 2 cores)
HEADROOM_STEPS = {"cuda": 120, "cpu": 20}
HEADROOM_SETTINGS = {"cuda": [], "cpu": ["train.tokens_per_step=1024"]}


def preflight_checks(params: Params, machine: Machine) -> dict[str, Any]:
    """The driver against the torch build, and torch.compile here against the planner's rule."""
    from pipeline.tools import cudabuilds

    found = cudabuilds.nvidia_smi()
    checks = {"driver": found[0][1] if found else None, "driver_problem": cudabuilds.preflight(),
              "compile": None}
    if machine.kind == "cuda":
        checks["compile"] = _compile_here(params, machine)
    return checks


def _compile_here(params: Params, machine: Machine) -> dict[str, Any]:
    """Whether torch.compile builds a kernel on this GPU, and whether the planner allows it here."""
    import torch

    from pipeline.cost.planner import check_compile

    try:
        check_compile(params.model_copy(update={"train": params.train.model_copy(update={"compile": True})}),
                      machine.device)
        allowed, why = True, ""
    except PipelineError as exc:
        allowed, why = False, str(exc)
    torch._dynamo.reset()
    try:
        torch.compile(lambda x: torch.nn.functional.silu(x) * 2)(torch.ones(64, device="cuda"))
        torch.cuda.synchronize()
        runs, note = True, ""
    except Exception as exc:  # Triton refusing this GPU is the result being checked
        runs, note = False, f"{type(exc).__name__}: {first_line(exc)}"
    return {"planner_allows": allowed, "planner_says": why, "runs": runs, "note": note}


def fp16_headroom(kind: str) -> dict[str, Any]:
    """The demo model trained on the bundled corpus (tokenized here, in a temporary directory),
    then probed for fp16 headroom: the report's table and its verdict."""
    import tempfile

    from pipeline.core import params as params_module
    from pipeline.registry import run_stage
    from pipeline.tools import demo_corpus, fp16probe

    with tempfile.TemporaryDirectory(prefix="budgetgpt-fp16-probe-") as tmp:
        paths = [f"paths.{key}={Path(tmp) / key}" for key in ("corpus", "clean", "tokenizer", "tokens", "reports")]
        params = params_module.load([ROOT / "params.yaml", DEMO_OVERLAY], paths + HEADROOM_SETTINGS[kind])
        demo_corpus.write(params.paths.corpus, demo_corpus.generate())
        run_stage("clean", params)
        run_stage("tokenize", params)
        headroom = fp16probe.after_training(params, HEADROOM_STEPS[kind], device=kind,
                                            precision="fp16" if kind == "cuda" else "fp32")
    return {**headroom.as_dict(), "markdown": fp16probe.markdown(headroom)}
