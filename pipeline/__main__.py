"""The command line: python -m pipeline STAGE [--params FILE ...] [--set dotted.key=value ...] [--log FILE]

Later --params files and --set override earlier ones. A known error prints one message on stderr
and exits non-zero (2 for bad input or a path it cannot write, 3 when the budget gate refuses the
run), with no traceback; an interrupted train exits 130 (SIGINT) or 143 (SIGTERM) after its
checkpoint. `--log FILE` copies the output into FILE from inside the process (pipeline/core/console.py).
A stage the registry marks distributed runs as one process per device of its plan
(cost.num_devices as the estimate stage read it), spread over the nodes of a SLURM job that holds several
(pipeline/core/launch.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from pipeline.core import console
from pipeline.core.driver import first_process, inside_launch, stop_with_driver
from pipeline.core.errors import PipelineError, unwritable

TOOLS = {
    "demo-corpus": ("pipeline.tools.demo_corpus", "write the bundled multilingual demo corpus"),
    "dag": ("pipeline.tools.dag", "write dvc.yaml from the stage registry, or --check that it is current"),
    "doctor": ("pipeline.tools.doctor", "before paying for a run: is this machine ready for it? (exit 2 if not)"),
    "fp16-probe": ("pipeline.tools.fp16probe", "fp16 headroom of the planned model or a checkpoint, measured in fp32 (exit 2 if short)"),
    "gpu-check": ("pipeline.tools.gpucheck.command", "on a new GPU: measure memory, speed and the 4 GB / 16 GB plans (reports/gpu-check.md)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; a tool's own options only for `command`: its module may import torch, and every
    stage would pay those seconds at startup."""
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    from pipeline.registry import STAGES

    commands = {**{s.name: (s.entry_point, s.help) for s in STAGES}, **TOOLS}
    for name, (module, help_text) in commands.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--params", action="append", metavar="FILE",
                         help="params YAML file; repeat to layer overlays (default: params.yaml)")
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                         help="override one value, e.g. --set train.lr=3e-4 (repeatable)")
        if name in TOOLS:
            if name == command:
                importlib.import_module(module).add_arguments(cmd)
        else:  # a driver's log file, written without a pipe that could die before the stage does
            cmd.add_argument("--log", type=Path, metavar="FILE", help="also write the output to FILE")
    return parser


# The runtime never reaches a network: every load names local files (local_files_only=True), and
# these make any library call that would still try fail at once instead of waiting on a timeout.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "DVCLIVE_OPEN": "false"}


def main(argv: list[str] | None = None, *, restore_streams: bool = True) -> int:
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    saved = sys.stdout, sys.stderr
    try:
        # a worker of a launch appends to the log its launcher emptied
        console.install(getattr(args, "log", None), append=inside_launch())
        return _run(args, argv)
    except PipelineError as exc:  # the log file itself
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if restore_streams:
            sys.stdout, sys.stderr = saved


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    params = None
    try:
        from pipeline.core import params as params_module

        params = params_module.load(args.params, args.overrides)
        if args.command in TOOLS:
            return importlib.import_module(TOOLS[args.command][0]).main(params, args) or 0
        from pipeline.registry import LAUNCHER, PLAN, by_name, resolve, run_stage  # the stage's module is imported only now

        stop_with_driver()
        # The process count is the plan's, which train reads and holds the run to
        # (pipeline/engine/plan.py): a cost.num_devices change reruns estimate, and its new plan
        # reruns train, whichever file or driver the value was set in.
        # The launcher is imported by name, so only a distributed stage has it in its code deps.
        if by_name(args.command).distributed and not inside_launch():
            plan = resolve(PLAN.template, params.paths)
            code = importlib.import_module(LAUNCHER).launch(plan, argv)
            if code is not None:
                return code
        run_stage(args.command, params)
        return 0
    except PipelineError as exc:
        if first_process() or not exc.every_process:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        error = unwritable(exc, params.section("paths") if params else {})
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # the streams stay wrapped: at exit Python flushes sys.stdout, and a failed flush of a dead
    # original would turn the exit code into 120
    sys.exit(main(restore_streams=False))
