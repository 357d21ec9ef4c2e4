"""The GPU check: one command on a freshly rented GPU VM, before a paid run, in under 10 minutes.

    make gpu-check                      # python -m pipeline.tools.gpucheck --device cuda
    make gpu-check DEVICE=cpu           # the same code, demo model only, on CPU (CI, about 3 minutes on 2 cores)
    python -m pipeline gpu-check [--params FILE ...] [--set KEY=VALUE ...] [--device cuda|cpu]

It trains a few real steps (pipeline.engine.training: the train stage's own model, optimizer, LR
schedule and step) on random token ids (speed and memory ignore content) of the configured model (params:
a GPT-2-small-sized Qwen3 + Muon, context 1024) and of the demo model (params/demo.yaml), in fp16 + GradScaler, bf16
where the device has it natively, and fp32, with activation checkpointing off and on, and records
predicted against measured peak memory (compute.training_memory, as the planner uses it) and step
time, fp16 overflow steps, NVML energy per step and the SDPA kernel that ran. Then it trains the
4 GB (rtx2050-laptop-4gb) and 16 GB (t4-16gb) plans for 20 steps each under a
torch.cuda.set_per_process_memory_fraction cap of that device's memory. Then what a first paid run
would meet: the NVIDIA driver against the torch build (pipeline/tools/cudabuilds.py), whether
torch.compile runs on this GPU and the planner refuses it where it does not, the SDPA kernel each
configuration ran (the math kernel breaks the memory plan), and the fp16 headroom of the demo model
after training on the bundled corpus (pipeline/tools/fp16probe.py). It writes
reports/gpu-check.md and reports/gpu-check.json and exits 2 when something would fail a run.

One module a job: packages.py (what to install first, checked before anything else is imported),
machine.py (the GPU or CPU and the train stage's step on it), configs.py (one configuration
predicted against measured), plans.py (the plans under a memory cap), paidrun.py (what a first
paid run meets), report.py (the verdict and the reports), command.py (the command and the whole
check, in that order).
"""
