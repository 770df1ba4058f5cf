"""The five sections of an experiment config and the resolved config, validated by pydantic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adcore.contracts.method import Precision
from adcore.contracts.records import PluginConfig, listify_scalars
from adcore.plugins.registry import Component
from adcore.toolkit.weights import RANDOM

DEFAULT_METRICS = ["image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"]
SECTIONS = ("experiment", "data", "model", "evaluation", "visualization")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, data: Any) -> Any:
        return listify_scalars(cls, data)


class ExperimentSection(Section):
    name: str = Field("default", description="Folder name of this experiment's results.")
    seed: int = Field(0, description="Seed of the support set and of any randomness.")
    output_root: Path = Field(Path("results"), description="Root of the results layout.")

    @field_validator("output_root")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return value.expanduser()  # '~/x' quoted on the command line reaches us unexpanded

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return value


class DataSection(Section):
    """Shared data keys; any other key belongs to the data set plugin's config."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    dataset: str = Field("synthetic", description="Data set plugin name (or dist:name).")
    root: Path | None = Field(None, description="Data set root folder.")

    @field_validator("root")
    @classmethod
    def _home(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    categories: list[str] | None = Field(None, description="Categories to run; all if unset.")
    batch_size: int = Field(8, ge=1, description="Test images per predict batch.")
    k_shot: int | Literal["all"] | None = Field(
        None,
        description="Normal training images given to fit: 0 zero-shot, k few-shot, all; "
        "null: the method's natural setting.",
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    skip_bad_samples: bool = Field(False, description="Leave out unreadable or bad samples.")
    max_image_pixels: int | None = Field(
        89_478_485,  # PIL's Image.MAX_IMAGE_PIXELS
        ge=1,
        description="Largest image decoded (width x height); larger ones are bad samples. "
        "null: no limit.",
    )
    intensity_range: Literal["category", "type"] | tuple[float, float] = Field(
        "category",
        description="How images of more than 8 bits become 0..255: 'category' (one range per "
        "category: the full scale of the smallest bit depth holding its largest value; floats "
        "0..1 or their min..max), 'type' (the container's full scale), or [low, high].",
    )

    @field_validator("k_shot", mode="before")
    @classmethod
    def _setting(cls, value: Any) -> Any:
        """One message for every wrong value (not one per member of the union)."""
        if value is None or value == "all":
            return value
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit():
            raise ValueError("must be 0 (zero-shot), a positive count, or 'all' (full-shot)")
        return int(text)


class ModelSection(Section):
    """Shared model keys; any other key belongs to the method plugin's config."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("patchcore", description="Method plugin name (or dist:name).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Precision = Field(
        "fp32", description="fp32, or bf16 (CUDA; AMX/AVX512-BF16 CPUs) / fp16 (CUDA) backbones."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in {"auto", "cpu", "cuda"} or (index and not index.isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


class LatencySettings(Section):
    """Efficiency figures of ``ad eval``: from the prediction pass plus a budgeted probe."""

    enabled: bool = Field(True, description="Record efficiency figures for each category.")
    warmup_iters: int | None = Field(
        None, ge=0, description="Untimed batch-1 calls first (default: 0 on CPU, 10 on CUDA)."
    )
    measure_iters: int | None = Field(
        None, ge=1, description="Timed batch-1 calls; unset: as many as the budget allows."
    )
    budget_fraction: float = Field(
        0.05, gt=0, le=1, description="Batch-1 probe budget, a fraction of the predict time."
    )
    min_iters: int = Field(
        1,
        ge=1,
        description="Timed batch-1 calls at least, whatever the budget (the pass's one-image "
        "calls count).",
    )
    throughput_batch: int = Field(16, ge=1, description="Batch size of ad bench's throughput run.")


class EvaluationSection(Section):
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    resolution: Literal["input", "original"] = Field(
        "input", description="Compare at the method's map size, or each mask's own size."
    )
    latency: LatencySettings = Field(default_factory=LatencySettings)
    reporters: list[str] | None = Field(
        None,
        description="Reporters to run (name or dist:name); null: the default ones, and the "
        "name `default` in the list stands for them.",
    )


class VisualizationSection(Section):
    num_examples: int = Field(8, ge=0, description="Overlays per category.")
    save_overlay: bool = Field(False, description="Write heatmap overlays per category.")


class ExperimentConfig(Section):
    """The whole config before the plugins' own fields are checked."""

    experiment: ExperimentSection = Field(default_factory=ExperimentSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    visualization: VisualizationSection = Field(default_factory=VisualizationSection)


class ResolvedConfig(BaseModel):
    """A config whose plugins are found and whose plugin fields are validated."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base: ExperimentConfig
    method: Component
    dataset: Component
    method_config: PluginConfig
    dataset_config: PluginConfig
    notes: list[str] = []  # choices made for the user, e.g. the natural k_shot

    def to_dict(self) -> dict[str, Any]:
        """Plain, complete values, as written to ``config.yaml``."""
        data = self.base.model_dump(mode="json")
        data["model"] = {
            **{k: data["model"][k] for k in ("name", "device", "precision")},
            **self.method_config.model_dump(mode="json"),
        }
        shared = {k: v for k, v in data["data"].items() if k in DataSection.model_fields}
        data["data"] = {**shared, **self.dataset_config.model_dump(mode="json")}
        return data

    def fingerprint(self) -> str:
        """Identity of the computation; runtime-only keys do not change results' meaning."""
        data = self.to_dict()
        for key in ("num_workers",):
            data["data"].pop(key, None)
        data["experiment"].pop("output_root", None)
        data["evaluation"].pop("reporters", None)  # which files are written, not what is computed
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def metric_names(self) -> list[str]:
        """Result column of each metric: its name without a ``distribution:`` prefix."""
        return [m.rpartition(":")[2] for m in self.base.evaluation.metrics]

    @property
    def random_weights(self) -> bool:
        values = weights_fields(self.method_config).values()
        return any(isinstance(v, str) and v.strip().lower() == RANDOM for v in values)


def weights_fields(config: BaseModel) -> dict[str, Any]:
    """Fields that name weights: ``pretrained`` and those marked ``{"weights": True}``."""
    found = {}
    for name, info in type(config).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name == "pretrained" or extra.get("weights"):
            found[name] = getattr(config, name)
    return found
