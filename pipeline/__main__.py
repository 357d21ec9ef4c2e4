"""The command line: python -m pipeline STAGE [--params FILE ...] [--set dotted.key=value ...]

Later --params files and --set override earlier ones. A known error prints one message on stderr
and exits non-zero (2 for bad input, 3 when the budget gate refuses the run), with no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipeline.core.errors import PipelineError

TOOLS = {
    "demo-corpus": ("pipeline.tools.demo_corpus", "write the bundled multilingual demo corpus"),
    "dag": ("pipeline.tools.dag", "write dvc.yaml from the stage registry, or --check that it is current"),
    "doctor": ("pipeline.tools.doctor", "before paying for a run: is this machine ready for it? (exit 2 if not)"),
    "gpu-check": ("pipeline.tools.gpucheck", "on a new GPU: measure memory, speed and the 4 GB / 16 GB plans (reports/gpu-check.md)"),
}


def build_parser() -> argparse.ArgumentParser:
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
            importlib.import_module(module).add_arguments(cmd)
    return parser


# The runtime never reaches a network: every load names local files (local_files_only=True), and
# these make any library call that would still try fail at once instead of waiting on a timeout.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DVC_NO_ANALYTICS": "1", "DVCLIVE_OPEN": "false"}


def main(argv: list[str] | None = None) -> int:
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        from pipeline.core import params as params_module

        params = params_module.load(args.params, args.overrides)
        if args.command in TOOLS:
            return importlib.import_module(TOOLS[args.command][0]).main(params, args) or 0
        from pipeline.registry import run_stage  # the stage's module is imported only now

        run_stage(args.command, params)
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
