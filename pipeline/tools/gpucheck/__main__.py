"""python -m pipeline.tools.gpucheck: the check, its packages checked before any is imported."""
import sys

from pipeline.tools.gpucheck.command import cli

sys.exit(cli())
