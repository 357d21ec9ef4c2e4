# Generated from pipeline/registry.py by `python -m pipeline dag`: edit the registry, not this file.
# Before each stage's rule, its STAGE_params rule writes the values the stage reads
# (logs/params/STAGE.yaml); its params are those values, so a changed one reruns it and then the
# stage. A stage whose output a later stage reads by content is a checkpoint. PARAMS, paths,
# THREADS, after() and write_values() come from the Snakefile. See its docstring.


rule clean_params:
    output:
        "logs/params/clean.yaml",
    params:
        *PARAMS.values("clean"),
    log:
        "logs/params/clean.log",
    localrule: True
    run:
        write_values(output[0], params, log[0])


rule clean:
    input:
        values="logs/params/clean.yaml",
        code=[
            "pipeline/__main__.py",
            "pipeline/stages/clean.py",
            "pipeline/core/__init__.py",
            "pipeline/core/console.py",
            "pipeline/core/driver.py",
            "pipeline/core/errors.py",
            "pipeline/core/params.py",
            "pipeline/core/atomic.py",
            "pipeline/data/__init__.py",
            "pipeline/data/cleaning.py",
            "pipeline/data/corpus.py",
            "pipeline/core/record.py",
            "pipeline/data/quality.py",
            "pipeline/data/cleaned.py",
            "pipeline/data/dedup.py",
            "pipeline/data/langid.py",
        ],
        corpus=PARAMS.corpus_files(),
    output:
        clean=directory(paths.clean),
        clean_md=f"{paths.reports}/clean.md",
        clean_metrics=f"{paths.reports}/clean.json",
    log:
        job="logs/clean.log",
    threads: THREADS
    resources:
        gpu=0,
    shell:
        "exec python -m pipeline clean --params params.yaml --params {input.values} --log {log.job}"


rule tokenize_params:
    output:
        "logs/params/tokenize.yaml",
    params:
        *PARAMS.values("tokenize"),
    log:
        "logs/params/tokenize.log",
    localrule: True
    run:
        write_values(output[0], params, log[0])


rule tokenize:
    input:
        values="logs/params/tokenize.yaml",
        code=[
            "pipeline/__main__.py",
            "pipeline/stages/tokenize.py",
            "pipeline/core/__init__.py",
            "pipeline/core/console.py",
            "pipeline/core/driver.py",
            "pipeline/core/errors.py",
            "pipeline/core/params.py",
            "pipeline/core/provenance.py",
            "pipeline/core/atomic.py",
            "pipeline/data/__init__.py",
            "pipeline/data/bpe.py",
            "pipeline/data/cleaned.py",
            "pipeline/data/corpus.py",
            "pipeline/data/encode.py",
            "pipeline/data/tokens.py",
            "pipeline/data/readahead.py",
            "pipeline/core/record.py",
        ],
        clean=paths.clean,
    output:
        tokenizer=[f"{paths.tokenizer}/tokenizer.json", f"{paths.tokenizer}/tokenizer_config.json"],
        tokens=[
            f"{paths.tokens}/train.bin",
            f"{paths.tokens}/val.bin",
            f"{paths.tokens}/manifest.json",
        ],
    log:
        job="logs/tokenize.log",
    threads: THREADS
    resources:
        gpu=0,
    shell:
        "exec python -m pipeline tokenize --params params.yaml --params {input.values} --log {log.job}"


rule estimate_params:
    output:
        "logs/params/estimate.yaml",
    params:
        *PARAMS.values("estimate"),
    log:
        "logs/params/estimate.log",
    localrule: True
    run:
        write_values(output[0], params, log[0])


checkpoint estimate:
    input:
        values="logs/params/estimate.yaml",
        code=[
            "pipeline/__main__.py",
            "pipeline/stages/estimate.py",
            "pipeline/core/__init__.py",
            "pipeline/core/console.py",
            "pipeline/core/driver.py",
            "pipeline/core/errors.py",
            "pipeline/core/params.py",
            "pipeline/core/provenance.py",
            "pipeline/core/atomic.py",
            "pipeline/cost/__init__.py",
            "pipeline/cost/budget.py",
            "pipeline/cost/forecast.py",
            "pipeline/cost/hardware.py",
            "pipeline/cost/pricing.py",
            "pipeline/cost/planner.py",
            "pipeline/cost/render.py",
            "pipeline/cost/report.py",
            "pipeline/cost/spot.py",
            "pipeline/data/__init__.py",
            "pipeline/data/tokens.py",
            "pipeline/model/__init__.py",
            "pipeline/model/compute.py",
            "pipeline/core/units.py",
            "pipeline/cost/reclaim.py",
            "pipeline/core/cache.py",
            "pipeline/cost/pilots.py",
            "pipeline/cost/scaling.py",
            "pipeline/cost/forecast_record.py",
            "pipeline/engine/__init__.py",
            "pipeline/engine/identity.py",
            "pipeline/engine/plan.py",
            "pipeline/cost/cpuinfo.py",
            "pipeline/cost/calibration.py",
            "pipeline/engine/training.py",
            "pipeline/cost/forecast_render.py",
            "pipeline/core/record.py",
            "pipeline/model/build.py",
            "pipeline/model/registry.py",
            "pipeline/model/spec.py",
            "pipeline/data/batches.py",
            "pipeline/engine/validation.py",
            "pipeline/engine/step.py",
            "pipeline/model/architectures/__init__.py",
            "pipeline/model/architectures/gpt2.py",
            "pipeline/model/architectures/llama.py",
            "pipeline/model/architectures/qwen3.py",
            "pipeline/model/rotary.py",
            "pipeline/cost/hardware.yaml",
        ],
        tokens=[
            f"{paths.tokens}/train.bin",
            f"{paths.tokens}/val.bin",
            f"{paths.tokens}/manifest.json",
        ],
        tokenizer=[f"{paths.tokenizer}/tokenizer.json", f"{paths.tokenizer}/tokenizer_config.json"],
    output:
        plan=f"{paths.reports}/plan.json",
        cost=f"{paths.reports}/cost.json",
    log:
        job="logs/estimate.log",
        cost_md=f"{paths.reports}/cost.md",
    threads: THREADS
    resources:
        gpu=0,
    shell:
        "exec python -m pipeline estimate --params params.yaml --params {input.values} --log {log.job}"


rule train_params:
    output:
        "logs/params/train.yaml",
    params:
        *PARAMS.values("train"),
    log:
        "logs/params/train.log",
    localrule: True
    run:
        write_values(output[0], params, log[0])


checkpoint train:
    input:
        values="logs/params/train.yaml",
        code=[
            "pipeline/__main__.py",
            "pipeline/stages/train.py",
            "pipeline/core/launch.py",
            "pipeline/core/__init__.py",
            "pipeline/core/console.py",
            "pipeline/core/driver.py",
            "pipeline/core/errors.py",
            "pipeline/core/params.py",
            "pipeline/cost/__init__.py",
            "pipeline/cost/calibration.py",
            "pipeline/cost/budget.py",
            "pipeline/cost/report.py",
            "pipeline/data/__init__.py",
            "pipeline/data/tokens.py",
            "pipeline/engine/__init__.py",
            "pipeline/engine/plan.py",
            "pipeline/engine/report.py",
            "pipeline/engine/signals.py",
            "pipeline/engine/trainer.py",
            "pipeline/core/multinode.py",
            "pipeline/core/torchrun.py",
            "pipeline/core/atomic.py",
            "pipeline/core/cache.py",
            "pipeline/core/units.py",
            "pipeline/cost/reclaim.py",
            "pipeline/core/record.py",
            "pipeline/core/provenance.py",
            "pipeline/engine/progress.py",
            "pipeline/data/batches.py",
            "pipeline/engine/checkpoint/__init__.py",
            "pipeline/engine/checkpoint/manager.py",
            "pipeline/engine/checkpoint/remote.py",
            "pipeline/engine/identity.py",
            "pipeline/engine/meter.py",
            "pipeline/engine/stopping.py",
            "pipeline/engine/trainlog.py",
            "pipeline/engine/training.py",
            "pipeline/engine/validation.py",
            "pipeline/model/__init__.py",
            "pipeline/model/compute.py",
            "pipeline/engine/checkpoint/space.py",
            "pipeline/engine/checkpoint/store.py",
            "pipeline/engine/checkpoint/lifecycle.py",
            "pipeline/engine/checkpoint/lock.py",
            "pipeline/engine/checkpoint/lease.py",
            "pipeline/engine/step.py",
            "pipeline/model/build.py",
            "pipeline/model/registry.py",
            "pipeline/model/spec.py",
            "pipeline/model/architectures/__init__.py",
            "pipeline/model/architectures/gpt2.py",
            "pipeline/model/architectures/llama.py",
            "pipeline/model/architectures/qwen3.py",
            "pipeline/model/rotary.py",
        ],
        tokens=[
            f"{paths.tokens}/train.bin",
            f"{paths.tokens}/val.bin",
            f"{paths.tokens}/manifest.json",
        ],
        tokenizer=[f"{paths.tokenizer}/tokenizer.json", f"{paths.tokenizer}/tokenizer_config.json"],
        plan=after(checkpoints.estimate, f"{paths.reports}/plan.json"),
    output:
        model=[
            f"{paths.model}/config.json",
            f"{paths.model}/generation_config.json",
            f"{paths.model}/model.safetensors",
            f"{paths.model}/tokenizer.json",
            f"{paths.model}/tokenizer_config.json",
        ],
        train_live=directory(f"{paths.reports}/train_live"),
        train_report=f"{paths.reports}/train.json",
    log:
        job="logs/train.log",
    threads: THREADS
    resources:
        gpu=PARAMS.resolved.cost.num_devices,
    shell:
        "exec python -m pipeline train --params params.yaml --params {input.values} --log {log.job}"


rule evaluate_params:
    output:
        "logs/params/evaluate.yaml",
    params:
        *PARAMS.values("evaluate"),
    log:
        "logs/params/evaluate.log",
    localrule: True
    run:
        write_values(output[0], params, log[0])


rule evaluate:
    input:
        values="logs/params/evaluate.yaml",
        code=[
            "pipeline/__main__.py",
            "pipeline/stages/evaluate.py",
            "pipeline/core/__init__.py",
            "pipeline/core/console.py",
            "pipeline/core/driver.py",
            "pipeline/core/errors.py",
            "pipeline/core/params.py",
            "pipeline/core/provenance.py",
            "pipeline/core/atomic.py",
            "pipeline/data/__init__.py",
            "pipeline/data/tokens.py",
            "pipeline/engine/__init__.py",
            "pipeline/engine/checkpoint/__init__.py",
            "pipeline/engine/plan.py",
            "pipeline/engine/report.py",
            "pipeline/evaluation/__init__.py",
            "pipeline/evaluation/harness.py",
            "pipeline/evaluation/loading.py",
            "pipeline/evaluation/reference.py",
            "pipeline/evaluation/sampling.py",
            "pipeline/evaluation/scoring.py",
            "pipeline/reports/__init__.py",
            "pipeline/reports/forecast_check.py",
            "pipeline/reports/headline.py",
            "pipeline/reports/plots.py",
            "pipeline/reports/quantities.py",
            "pipeline/core/record.py",
            "pipeline/engine/checkpoint/space.py",
            "pipeline/engine/checkpoint/store.py",
            "pipeline/engine/checkpoint/lifecycle.py",
            "pipeline/engine/checkpoint/lock.py",
            "pipeline/engine/progress.py",
            "pipeline/model/__init__.py",
            "pipeline/model/build.py",
            "pipeline/cost/__init__.py",
            "pipeline/cost/forecast_record.py",
            "pipeline/engine/stopping.py",
            "pipeline/model/registry.py",
            "pipeline/core/cache.py",
            "pipeline/model/spec.py",
            "pipeline/model/architectures/__init__.py",
            "pipeline/model/architectures/gpt2.py",
            "pipeline/model/architectures/llama.py",
            "pipeline/model/architectures/qwen3.py",
            "pipeline/model/rotary.py",
        ],
        tokens=[
            f"{paths.tokens}/train.bin",
            f"{paths.tokens}/val.bin",
            f"{paths.tokens}/manifest.json",
        ],
        tokenizer=[f"{paths.tokenizer}/tokenizer.json", f"{paths.tokenizer}/tokenizer_config.json"],
        eval_data=PARAMS.eval_files(),
        train_report=after(checkpoints.train, f"{paths.reports}/train.json"),
    output:
        samples_md=f"{paths.reports}/samples.md",
        summary_md=f"{paths.reports}/summary.md",
        plots_dir=[
            f"{paths.reports}/plots/loss.png",
            f"{paths.reports}/plots/loss_train.csv",
            f"{paths.reports}/plots/loss_val.csv",
            f"{paths.reports}/plots/checkpoints.png",
            f"{paths.reports}/plots/checkpoints.csv",
            f"{paths.reports}/plots/estimate_vs_actual.png",
            f"{paths.reports}/plots/estimate_vs_actual.csv",
        ],
        eval_report=f"{paths.reports}/eval.json",
        metrics=f"{paths.reports}/metrics.json",
    log:
        job="logs/evaluate.log",
    threads: THREADS
    resources:
        gpu=1,
    shell:
        "exec python -m pipeline evaluate --params params.yaml --params {input.values} --log {log.job}"


# Every stage's outputs, the Snakefile's `rule all`: the model too, which no stage reads.
STAGE_OUTPUTS = [
    rules.clean.output,
    rules.tokenize.output,
    rules.estimate.output,
    rules.train.output,
    rules.evaluate.output,
]
