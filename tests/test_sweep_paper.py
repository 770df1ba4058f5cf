"""The shipped AF-CLIP paper sweep on fixtures: two trainings, eleven zero-shot evaluations,
the paper-layout table. Only the model settings are swapped for a tiny random ViT; the grid,
the trainings and the data roots (``data/<release folder>``) are the shipped file's."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from adcore.cli import app
from adcore.infra.errors import ConfigError
from adcore.sweep.spec import load_sweep
from adfixtures import WRITERS
from adtest import write_mvtec_tree
from test_datasets_visa import write_visa
from test_datasets_zeroshot import TINY

SWEEPS = Path(__file__).resolve().parents[1] / "configs" / "sweeps"
AUTHORS_ORDER = [
    "mvtec", "visa", "btad", "dtd", "dagm", "isic", "clinicdb", "colondb", "brainmri", "br35h",
    "kvasir",
]  # fmt: skip
TINY_SET = {
    "model.backbone": TINY,
    "model.pretrained": "none",
    "model.resolution": 32,
    "model.layers": [2, 4],
    "model.epochs": 1,
    "model.batch_size": 4,
    "data.num_workers": 0,
    "evaluation.latency.enabled": False,
}


def tiny_copy(name: str, folder: Path) -> Path:
    """The shipped sweep file with tiny model settings, its base made absolute."""
    spec = yaml.safe_load((SWEEPS / name).read_text())
    spec["base"] = str((SWEEPS / spec["base"]).resolve())
    spec["set"] = {**spec["set"], **TINY_SET}
    spec["output_root"] = str(folder / "results")
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory whose data/ holds every set under its release folder name."""
    work = tmp_path_factory.mktemp("paper")
    data = work / "data"
    write_mvtec_tree(data / "mvtec_anomaly_detection", ("widget",), num_train=1, num_good=2)
    write_visa(data / "VisA_20220922")
    for write in WRITERS.values():
        write(data)
    return work


def test_shipped_sweeps_expand_to_the_protocol() -> None:
    for name, method in (("afclip_paper.yaml", "afclip"), ("miniclip_paper.yaml", "miniclip")):
        sweep = load_sweep(SWEEPS / name)
        points = sweep.points()
        assert [p["data.dataset"] for p in points] == AUTHORS_ORDER
        used = {p["data.dataset"]: sweep.training_for(p).name for p in points}
        assert used == {
            d: f"{method}_train_visa" if d == "mvtec" else f"{method}_train_mvtec"
            for d in AUTHORS_ORDER
        }
        raw = sweep.raw_config(points[0])
        assert raw["model"]["name"] == method
        assert raw["model"]["checkpoint"].endswith(
            f"results/visa/{method}/{method}_train_visa/checkpoint.safetensors"
        )


def test_a_checkpoint_given_in_the_file_wins(tmp_path: Path) -> None:
    spec = yaml.safe_load((SWEEPS / "afclip_paper.yaml").read_text())
    spec["base"] = str((SWEEPS / spec["base"]).resolve())
    spec["overrides"].append({"when": {"data.dataset": "btad"}, "set": {"model.checkpoint": "x"}})
    spec["train"][0]["when"] = {"no.such": [1]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"no\.such"):
        load_sweep(path)
    spec["train"][0]["when"] = {"data.dataset": ["mvtec"]}
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    btad = next(p for p in sweep.points() if p["data.dataset"] == "btad")
    assert sweep.raw_config(btad)["model"]["checkpoint"] == "x"


def test_random_weights_keep_the_trained_checkpoint(data_dir: Path) -> None:
    """--random-weights replaces pretrained backbones only: the points still evaluate with
    the checkpoint their training entry writes, so the sweep trains first."""
    from adcore.plugins.registry import get_registry
    from adcore.sweep.plan import plan_sweep
    from adcore.sweep.training import needed_trainings

    sweep = load_sweep(tiny_copy("afclip_paper.yaml", data_dir))
    cwd = os.getcwd()
    os.chdir(data_dir)
    try:
        plan = plan_sweep(sweep, get_registry(), random_weights=True)
    finally:
        os.chdir(cwd)
    names = [training.name for training in needed_trainings(sweep, plan)]
    assert sorted(names) == ["afclip_train_mvtec", "afclip_train_visa"]
    for experiment in plan.experiments:
        model = experiment.raw["model"]
        assert model["pretrained"] == "none"
        assert model["checkpoint"] == str(sweep.checkpoint(sweep.training_for(experiment.point)))


@pytest.fixture(scope="module")
def swept(data_dir: Path):
    """``ad sweep`` of the tiny copy, run twice (the second must find everything done)."""
    sweep_file = tiny_copy("afclip_paper.yaml", data_dir)
    cwd = os.getcwd()
    os.chdir(data_dir)  # the shipped roots are relative: data/<release folder>
    try:
        first = CliRunner().invoke(app, ["sweep", str(sweep_file), "--no-progress"])
        again = CliRunner().invoke(app, ["sweep", str(sweep_file), "--no-progress"])
    finally:
        os.chdir(cwd)
    return data_dir / "results", first, again


def test_afclip_paper_sweep_trains_then_evaluates_everything(swept) -> None:
    results, first, again = swept
    assert first.exit_code == 0, first.output
    checkpoints = {
        aux: results / aux / "afclip" / f"afclip_train_{aux}" / "checkpoint.safetensors"
        for aux in ("visa", "mvtec")
    }
    assert all(path.is_file() for path in checkpoints.values())
    assert "Trained 1 epoch(s)" in first.output

    runs = {d: results / d / "afclip" / "afclip_paper" for d in AUTHORS_ORDER}
    for dataset, run in runs.items():
        config = yaml.safe_load((run / "config.yaml").read_text())
        expected = checkpoints["visa" if dataset == "mvtec" else "mvtec"]
        assert Path(config["model"]["checkpoint"]) == expected
        assert (run / "summary_metrics.csv").is_file()

    summary = results / "sweeps" / "afclip_paper"
    with (summary / "paper.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["dataset"] for r in rows] == AUTHORS_ORDER
    assert [r["trained_on"] for r in rows] == ["visa"] + ["mvtec"] * 10
    metrics = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap",
               "pixel_f1_max", "pro"]  # fmt: skip
    for row in rows:
        with (runs[row["dataset"]] / "summary_metrics.csv").open(newline="") as handle:
            mean = next(r for r in csv.DictReader(handle) if r["category"] == "mean")
        for metric in metrics:
            value, truth = float(row[metric]), float(mean[metric])
            assert (math.isnan(value) and math.isnan(truth)) or value == truth
        image_na = math.isnan(float(row["image_auroc"]))
        pixel_na = math.isnan(float(row["pixel_auroc"]))
        assert image_na == (row["dataset"] in {"isic", "clinicdb", "colondb", "kvasir"})
        assert pixel_na == (row["dataset"] in {"brainmri", "br35h"})
    table = (summary / "paper.md").read_text()
    assert "| afclip (random weights) | MVTec-AD | visa |" in table
    assert table.index("| ISIC |") < table.index("| CVC-ClinicDB |") < table.index("| Kvasir |")
    assert "- Kvasir: image metrics n/a: every image of Kvasir shows a lesion" in table
    assert "- Br35H: pixel metrics n/a: Br35H labels whole images only" in table

    assert again.exit_code == 0, again.output
    assert "Trained" not in again.output
    assert "0 unit(s) run" in again.output


def test_report_paper_layout_through_the_cli(swept, tmp_path: Path) -> None:
    results = swept[0]
    runs = sorted(results.glob("*/afclip/afclip_paper"))
    assert len(runs) == len(AUTHORS_ORDER)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["report", *map(str, runs), "--out", str(out), "--layout", "paper"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["paper.csv", "paper.md"]
    header = (out / "paper.md").read_text().splitlines()[4]
    assert header == (
        "| method | data set | trained on | image AUROC | image AP | image F1-max | pixel AUROC "
        "| pixel AP | pixel F1-max | PRO |"
    )
