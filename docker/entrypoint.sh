#!/bin/sh
# The CUDA image's entrypoint: the NVIDIA driver the container toolkit mounted, against the image's
# torch build (pipeline/tools/cudabuilds.py), before the command; too old a driver is exit 2 with
# the fixes, not a run on the CPU or a train stage that refuses after its data was read. Then the
# command itself, as PID 1 (exec), so that signals and a driver's watch reach it directly.
(cd /work && python -m pipeline.tools.cudabuilds) || exit $?
exec "$@"
