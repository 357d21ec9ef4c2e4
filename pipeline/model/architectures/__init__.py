"""One file per architecture, each defining SPEC (pipeline.model.spec.Architecture), named as
model.architecture names it; pipeline/model/registry.py imports each one."""
