#!/usr/bin/env bash
# What a new VM runs on a fresh clone of this repository (README, "A spot T4"), on its first start
# and again on each VM that replaces a reclaimed one:
#
#   1. pull the cleaned corpus, token files and tokenizer from the DVC remote (clean and tokenize ran
#      once, elsewhere);
#   2. run the workflow, `snakemake --profile "$PROFILE"` (or `dvc repro`); train resumes from the
#      newest complete checkpoint in paths.checkpoints_remote, so a reclaim costs only the steps
#      since the last upload;
#   3. upload the model and the reports (and `dvc push` the DVC-tracked outputs under DVC).
#
# Environment: PROFILE (default t4), DRIVER (snakemake | dvc, default snakemake), CHECKPOINTS_REMOTE
# (overrides paths.checkpoints_remote; under DVC it must match params.yaml), DVC_REMOTE (a DVC
# remote URL; default: the one in .dvc/config), RESULTS_REMOTE (where the model and reports go;
# default: CHECKPOINTS_REMOTE/results).
# Exit status: the failing stage's own, passed through (2 bad input, 3 over budget, 143 stopped by
# SIGTERM with its checkpoint uploaded), so that a job scheduler can tell a retry from a mistake.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-t4}
DRIVER=${DRIVER:-snakemake}
export DVC_NO_ANALYTICS=1
PY=$(command -v python || command -v python3)

fail() { echo "cloud/run.sh: $1" >&2; exit "${2:-2}"; }

# The NVIDIA driver against the installed torch build (exit 2 with the fixes): too old a driver
# leaves torch without a GPU, and train would refuse only after the data was pulled.
"$PY" -m pipeline.tools.cudabuilds || exit $?

# The params this run uses (params.yaml, and the remote from the environment): bad input is exit 2
# here, before anything is pulled or paid for.
overlay=()
if [ -n "${CHECKPOINTS_REMOTE:-}" ]; then
  mkdir -p logs
  printf 'paths:\n  checkpoints_remote: "%s"\n' "$CHECKPOINTS_REMOTE" > logs/cloud-params.yaml
  overlay=(--params logs/cloud-params.yaml)
fi
remote=$("$PY" - "${overlay[@]}" <<'PY'
import sys
from pipeline.core import params
from pipeline.core.errors import PipelineError
files = ["params.yaml"] + sys.argv[2::2]
try:
    print(params.load(files).paths.checkpoints_remote or "")
except PipelineError as exc:
    sys.exit(f"cloud/run.sh: {exc}")
PY
) || exit 2
[ -n "$remote" ] || fail "no paths.checkpoints_remote: set it in params.yaml or CHECKPOINTS_REMOTE=s3://BUCKET/PREFIX (a VM's disk does not survive a reclaim)"
if [ "$DRIVER" = dvc ] && [ -n "${CHECKPOINTS_REMOTE:-}" ] && ! grep -q "checkpoints_remote: *[\"']\?${CHECKPOINTS_REMOTE}[\"']\?\( \|$\)" params.yaml; then
  fail "DVC reads params.yaml only: set paths.checkpoints_remote: $CHECKPOINTS_REMOTE there"
fi

# 1. The token files (and the cleaned corpus they came from, which Snakemake would otherwise try
#    to make), never the raw corpus: clean and tokenize do not run on a VM.
if [ -n "${DVC_REMOTE:-}" ]; then
  dvc remote add --local --force --default vm "$DVC_REMOTE" || fail "DVC_REMOTE $DVC_REMOTE: dvc remote add failed"
fi
dvc pull clean tokenize || fail "dvc pull clean tokenize failed: run both and 'dvc push' their outputs first (README, 'A spot T4'), and check the DVC remote's credentials"

# 2. The workflow.
if [ "$DRIVER" = dvc ]; then
  # dvc.lock records the pulled files by content; --downstream starts at estimate, so a corpus left
  # out of the clone (it is not pulled) is never a reason to tokenize again
  dvc repro --downstream estimate
  status=$?
else
  configfile=()
  [ ${#overlay[@]} -gt 0 ] && configfile=(--configfile logs/cloud-params.yaml)
  # A fresh clone has no .snakemake records and new mtimes: the pulled token files may be older
  # than the pulled cleaned corpus, and with the raw corpus present Snakemake would clean and
  # tokenize again. --touch marks the pulled files as made by this corpus and params, Snakemake's
  # own way ("pretend that the rules were executed"), each rule's outputs newer than its inputs.
  # Without the raw corpus (it is not pulled) clean cannot be touched, and need not be.
  corpus=$("$PY" -c 'from pipeline.core import params; print(params.load(["params.yaml"]).paths.corpus)')
  touched=(tokenize)
  [ -e "$corpus" ] && touched=(clean tokenize)
  snakemake --profile "$PROFILE" "${configfile[@]}" --touch "${touched[@]}" || exit $?
  snakemake --profile "$PROFILE" "${configfile[@]}" 2>&1 | tee logs/cloud-run.log
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    # Snakemake exits 1 for any failed job; the job's own status is in its report of the command
    job=$(grep -o 'returned non-zero exit status [0-9]*' logs/cloud-run.log | tail -n 1 | grep -o '[0-9]*$')
    status=${job:-$status}
  fi
fi
[ "$status" -eq 0 ] || exit "$status"

# 3. The results, off the VM before it goes.
[ "$DRIVER" = dvc ] && { dvc push || fail "dvc push failed" 1; }
"$PY" - "${RESULTS_REMOTE:-$remote/results}" <<'PY' || fail "uploading the model and reports failed" 1
import sys
from pathlib import Path
from fsspec.core import url_to_fs
from pipeline.core import params
paths = params.load(["params.yaml"]).paths
fs, target = url_to_fs(sys.argv[1])
for local in (paths.model, paths.reports, Path("dvc.lock")):
    if local.exists():
        fs.put(str(local), f"{target}/{local.name}", recursive=local.is_dir())
print(f"cloud/run.sh: the model and reports are in {sys.argv[1]}")
PY
