"""pipeline/tools/snakemake_support.py against the Snakemake that is installed: what it takes from
Snakemake's internals still does what the Snakefile relies on, checked on a real `snakemake` run of
a tiny Snakefile. A failure here after an upgrade of the pinned Snakemake (requirements.lock) means
the module must follow the new internals before the workflow can: typed --config, --configfile
values, and jobs in sessions of their own (the signal forwarding of tests/test_interrupts.py)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import snakemake
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

SNAKEFILE = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from pipeline.tools.snakemake_support import WorkflowParams, forward_signals, typed_config_args

configfile: "params.yaml"

PARAMS = WorkflowParams(workflow)
with open("parsed.json", "w") as fh:
    json.dump({{"typed": typed_config_args(workflow), "raw": config["cost"], "local": workflow.local_exec,
               "train": PARAMS.values("train")}}, fh)

onstart:
    forward_signals()

rule session:
    output: "session.json"
    shell: "exec python -c 'import json, os; print(json.dumps([os.getpid(), os.getsid(0)]))' > {{output}}"
"""


def test_the_pinned_snakemake_is_installed():
    pinned = re.search(r"^snakemake==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert snakemake.__version__ == pinned


def test_typed_config_configfiles_and_sessions_on_a_real_run(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "more.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 9}}))
    result = subprocess.run([BIN / "snakemake", "--cores", "1", "--configfile", "more.yaml",
                             "--config", "cost={budget_usd: null, num_devices: 2}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = json.loads((tmp_path / "parsed.json").read_text())
    # Snakemake's own config has text where YAML has null and a number; ours has their types
    assert parsed["raw"]["budget_usd"] != parsed["typed"]["cost"]["budget_usd"]
    assert parsed["typed"] == {"cost": {"budget_usd": None, "num_devices": 2}}
    assert parsed["local"] is True and "train.max_steps: 9" in parsed["train"]
    pid, session = json.loads((tmp_path / "session.json").read_text())
    # forward_signals set start_new_session in snakemake.shell's _process_args, which every job's
    # Popen gets: without it the job is in Snakemake's session, and a Ctrl-C reaches it twice
    assert session == pid, "the job runs in Snakemake's session"
