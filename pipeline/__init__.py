"""budgetgpt: tokenize -> estimate -> train -> evaluate, driven by Snakemake or DVC."""
