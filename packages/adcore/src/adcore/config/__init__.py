"""Experiment configs: sections, YAML files and --set, resolution, the JSON schema."""
