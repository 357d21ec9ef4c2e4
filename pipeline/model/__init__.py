"""The model: pipeline/model/build.py builds it, pipeline/model/compute.py prices it, and each
architecture is one file in pipeline/model/architectures/, registered in pipeline/model/registry.py.
"""
