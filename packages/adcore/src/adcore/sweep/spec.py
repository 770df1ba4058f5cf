"""The sweep file: a base config, the axes to cross, exclusions, and its expansion.

```yaml
base: ../mvtec_winclip.yaml         # relative to this file (optional)
set: {data.root: /data/mvtec}       # fixed overrides of every point (optional)
axes:                               # the grid: every combination is one experiment
  data.k_shot: [1, 2, 4]
  experiment.seed: [0, 1, 2]
exclude:                            # a point matching every key of an entry is left out
  - {data.k_shot: 4, experiment.seed: 2}
overrides:                          # extra keys for the points that match ``when``
  - when: {model.name: patchcore}
    set: {model.backbone: resnet18}
output_root: results                # relative to the working directory, like --output
name: my-sweep                      # prefix of experiment names; default: the file's stem
train:                              # trainable methods: train once, evaluate zero-shot elsewhere
  - name: afclip_train_visa         # the training run: <output_root>/visa/<method>/<name>/
    set: {data.dataset: visa, data.root: /data/visa}
    when: {data.dataset: [mvtec]}   # points that use its checkpoint (a list: any of)
layout: paper                       # also write the paper-layout table (ad report --layout paper)
```

``ad sweep --data-root R`` sets ``data.root`` of every point to ``R`` (after ``set``,
``overrides`` and the axes), as ``--data-root`` does for ``ad eval``.

A ``train`` entry gives the points it matches ``model.checkpoint`` = its run's
``checkpoint.safetensors`` (unless they set a checkpoint themselves, e.g. released weights);
``ad sweep`` trains it first when that file is missing or unfinished.

Each point gets its own experiment name, ``<name>__<axis><value>__...`` over the axes other
than ``model.name`` and ``data.dataset`` (those already name the run folder's parents):
``data.k_shot`` -> ``k4``, ``experiment.seed`` -> ``seed1``, any other key -> its last part, a
dash and the value (``blur-3``; the whole key with dots as dashes when two axes share a last
part). Values are kept to letters, digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adcore.config.files import build_raw_config, deep_merge, nested, read_yaml_mapping
from adcore.config.problems import format_validation, validate_base
from adcore.infra.errors import ConfigError

PATH_AXES = ("model.name", "data.dataset")  # already in results/<dataset>/<method>/
SHORT_LABELS = {"data.k_shot": "k", "experiment.seed": "seed"}
GENERATED_KEYS = ("experiment.name", "experiment.output_root")


class Override(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: dict[str, Any] = Field(description="Axis values a point must all have.")
    set_: dict[str, Any] = Field(alias="set", description="Dotted keys set on those points.")


class Training(BaseModel):
    """One ``ad train`` run whose checkpoint some points evaluate with."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="Experiment name of the training run.")
    set_: dict[str, Any] = Field(
        alias="set", description="Dotted keys over the sweep's base and set (data.dataset, ...)."
    )
    when: dict[str, Any] = Field(
        description="Axis values of the points that use its checkpoint; a list: any of."
    )

    @field_validator("name")
    @classmethod
    def _plain(cls, name: str) -> str:
        if slug(name) != name:
            raise ValueError("use letters, digits, '.', '_' and '-' only")
        return name


class SweepFile(BaseModel):
    """What a sweep file may hold; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(None, description="Prefix of experiment names; default file stem.")
    base: Path | None = Field(None, description="Experiment config, relative to the sweep file.")
    set_: dict[str, Any] = Field(default_factory=dict, alias="set")
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    overrides: list[Override] = Field(default_factory=list)
    output_root: Path | None = None
    train: list[Training] = Field(default_factory=list)
    layout: Literal["comparison", "paper"] = Field(
        "comparison", description="paper: also write the paper-layout table of the runs."
    )

    @field_validator("axes")
    @classmethod
    def _non_empty(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in axes.items() if not values]
        if empty:
            raise ValueError(f"axis {', '.join(empty)} has no values")
        return axes

    @field_validator("name")
    @classmethod
    def _plain(cls, name: str | None) -> str | None:
        if name is not None and slug(name) != name:
            raise ValueError("use letters, digits, '.', '_' and '-' only")
        return name


def slug(value: Any) -> str:
    """A folder-safe spelling of an axis value."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, list | tuple):
        text = "-".join(slug(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "_"


class Sweep:
    """A loaded sweep file: its grid points and the raw config of each."""

    def __init__(self, path: Path, spec: SweepFile, data_root: Path | None = None) -> None:
        self.path = path
        self.spec = spec
        self.data_root = data_root  # --data-root: data.root of every point
        self.name = spec.name or slug(path.stem)
        self.base = (path.parent / spec.base).resolve() if spec.base else None
        self._check_keys()

    def _check_keys(self) -> None:
        keys = [*self.spec.set_, *self.spec.axes]
        for override in self.spec.overrides:
            keys += [*override.when, *override.set_]
        for key in keys:
            nested(key, None)  # names an unknown section as a ConfigError
        for key in GENERATED_KEYS:
            if key in self.spec.axes or key in self.spec.set_:
                raise ConfigError(
                    f"Sweep file {self.path}: {key} is set by the sweep itself.",
                    "Use the sweep's name: and output_root: keys instead.",
                )
        both = sorted(set(self.spec.set_) & set(self.spec.axes))
        if both:
            raise ConfigError(
                f"Sweep file {self.path}: {', '.join(both)} is both in set: and in axes:.",
                "Keep each key in one of them.",
            )
        for training in self.spec.train:
            keys += [*training.when, *training.set_]
        for entry in [
            *self.spec.exclude,
            *(o.when for o in self.spec.overrides),
            *(t.when for t in self.spec.train),
        ]:
            stray = sorted(set(entry) - set(self.spec.axes))
            if stray:
                raise ConfigError(
                    f"Sweep file {self.path}: exclude/when entry {entry} names "
                    f"{', '.join(stray)}, which is not an axis.",
                    f"Axes: {', '.join(self.spec.axes) or 'none'}.",
                )

    def points(self) -> list[dict[str, Any]]:
        """The cartesian product of the axes, in file order, minus the exclusions."""
        keys = list(self.spec.axes)
        product = itertools.product(*self.spec.axes.values())
        grid = [dict(zip(keys, values, strict=True)) for values in product]
        return [p for p in grid if not any(matches(p, e) for e in self.spec.exclude)]

    def experiment_name(self, point: dict[str, Any]) -> str:
        keys = [k for k in self.spec.axes if k not in PATH_AXES]
        leaves = [k.rpartition(".")[2] for k in keys]
        parts = [self.name]
        for key in keys:
            leaf = key.rpartition(".")[2]
            if key in SHORT_LABELS:
                label = SHORT_LABELS[key]
            else:
                label = (leaf if leaves.count(leaf) == 1 else key.replace(".", "-")) + "-"
            parts.append(label + slug(point[key]))
        return "__".join(parts)

    def raw_config(self, point: dict[str, Any]) -> dict[str, Any]:
        """Base file, then ``set``, matching ``overrides``, the point, and the sweep's own keys."""
        raw = merge_dotted(build_raw_config(self.base), self.spec.set_)
        for override in self.spec.overrides:
            if matches(point, override.when):
                raw = merge_dotted(raw, override.set_)
        raw = merge_dotted(raw, point)
        if self.data_root is not None:
            raw = merge_dotted(raw, {"data.root": str(self.data_root)})
        raw = merge_dotted(raw, {"experiment.name": self.experiment_name(point)})
        raw = self._with_output_root(raw)
        training = self.training_for(point)
        if training is not None and not (raw.get("model") or {}).get("checkpoint"):
            raw = merge_dotted(raw, {"model.checkpoint": str(self.checkpoint(training))})
        return raw

    def _with_output_root(self, raw: dict[str, Any]) -> dict[str, Any]:
        if self.spec.output_root is None:
            return raw
        return merge_dotted(raw, {"experiment.output_root": str(self.spec.output_root)})

    def training_for(self, point: dict[str, Any]) -> Training | None:
        """The first ``train`` entry whose ``when`` the point matches (list values: any of)."""
        for training in self.spec.train:
            if all(
                key in point
                and (point[key] in value if isinstance(value, list) else point[key] == value)
                for key, value in training.when.items()
            ):
                return training
        return None

    def training_config(self, training: Training) -> dict[str, Any]:
        """The raw config of a training run: base file, ``set``, then the entry's ``set``."""
        raw = merge_dotted(build_raw_config(self.base), self.spec.set_)
        raw = merge_dotted(raw, training.set_)
        raw = merge_dotted(raw, {"experiment.name": training.name})
        return self._with_output_root(raw)

    def checkpoint(self, training: Training) -> Path:
        """Where ``ad train`` writes the entry's checkpoint:
        ``<output_root>/<dataset>/<method>/<name>/checkpoint.safetensors``."""
        base = validate_base(self.training_config(training))
        dataset = base.data.dataset.rpartition(":")[2]
        method = base.model.name.rpartition(":")[2]
        root = base.experiment.output_root.expanduser().resolve()
        return root / dataset / method / training.name / "checkpoint.safetensors"


def matches(point: dict[str, Any], entry: dict[str, Any]) -> bool:
    return all(key in point and point[key] == value for key, value in entry.items())


def merge_dotted(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        raw = deep_merge(raw, nested(key, value))
    return raw


def describe_point(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "the base config"


def load_sweep(path: Path, data_root: Path | None = None) -> Sweep:
    """The sweep file at ``path``; ``data_root`` replaces ``data.root`` of every point
    (``train:`` entries keep their own)."""
    path = path.expanduser().resolve()
    data = read_yaml_mapping(path, "Sweep file", "the path given to ad sweep")
    try:
        spec = SweepFile.model_validate(data)
    except ValidationError as error:
        raise ConfigError(
            f"Sweep file {path} is invalid:\n" + format_validation(error),
            "Allowed keys: name, base, set, axes, exclude, overrides, output_root, train, layout.",
        ) from None
    return Sweep(path, spec, data_root)
