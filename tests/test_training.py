"""The generic `ad train` loop: outputs, only trainable parameters move, atomic resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from adcore.contracts.dataset import Sample
from adcore.contracts.method import (
    Runtime,
    TrainingBatch,
    TrainingPhase,
    TrainingSettings,
)
from adcore.infra.errors import OutputError
from adcore.run.training import train_method
from adcore.toolkit.trained import checkpoint_metadata
from adcore.toolkit.weights import load_checkpoint
from adtest import write_mvtec_tree
from trainables import PixelLogistic


def samples_of(root: Path) -> list[Sample]:
    samples = []
    for path in sorted((root / "widget" / "test").glob("*/*.png")):
        bad = path.parent.name != "good"
        mask = root / "widget" / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        samples.append(
            Sample(
                image_path=path, label=int(bad), category="widget", mask_path=mask if bad else None
            )
        )
    return samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    root = write_mvtec_tree(tmp_path_factory.mktemp("train") / "mvtec", ("widget",), 1, 4, 4)
    return samples_of(root)


def test_outputs_and_only_trainable_parameters_move(samples, tmp_path: Path) -> None:
    method = PixelLogistic()
    frozen = {k: v.clone() for k, v in method.frozen.state_dict().items()}
    result = train_method(
        method, samples, method.training_settings(), tmp_path, Runtime(),
        config={"model": {"name": "toy"}}, progress=False,
    )  # fmt: skip
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    for name, value in method.frozen.state_dict().items():
        assert torch.equal(value, frozen[name])
    # The checkpoint holds the trainable tensors only, with the run's record.
    state = load_checkpoint(result.checkpoint)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], method.head.weight.detach())
    record = checkpoint_metadata(result.checkpoint)
    assert record["epoch"] == 3 and record["weights_identity"]["backbone_hash"] == "abc"
    assert record["config"] == {"model": {"name": "toy"}}
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 3
    lines = result.log.read_text().splitlines()
    assert len(lines) == 1 + 3 * 2  # 8 images in batches of 4, three epochs
    assert result.curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_resume_continues_from_the_last_finished_epoch(samples, tmp_path: Path) -> None:
    settings = PixelLogistic().training_settings()
    straight = PixelLogistic()
    train_method(straight, samples, settings, tmp_path / "straight", Runtime(), progress=False)

    interrupted = PixelLogistic()
    original, calls = interrupted.training_loss, {"n": 0}

    def crash_in_third_epoch(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # two steps per epoch: the second step of epoch 3
            raise KeyboardInterrupt
        return original(*args)

    interrupted.training_loss = crash_in_third_epoch
    with pytest.raises(KeyboardInterrupt):
        train_method(
            interrupted, samples, settings, tmp_path / "resumed", Runtime(), progress=False
        )
    assert checkpoint_metadata(tmp_path / "resumed" / "checkpoint.safetensors")["epoch"] == 2

    resumed = PixelLogistic()
    result = train_method(
        resumed, samples, settings, tmp_path / "resumed", Runtime(), progress=False
    )
    assert result.resumed_from == 2
    epochs = [line.split(",")[0] for line in result.log.read_text().splitlines()[1:]]
    assert epochs == ["1", "1", "2", "2", "3", "3"]
    # Same data order and optimiser state: the resumed run ends where the straight one did.
    for name, value in straight.trainable_state().items():
        assert torch.allclose(resumed.trainable_state()[name], value, atol=1e-6), name


def test_resume_refuses_a_run_with_other_settings(samples, tmp_path: Path) -> None:
    method = PixelLogistic()
    settings = method.training_settings().model_copy(update={"epochs": 1})
    train_method(method, samples, settings, tmp_path, Runtime(), progress=False)
    other = settings.model_copy(update={"learning_rate": 0.1})
    with pytest.raises(OutputError, match="other settings"):
        train_method(PixelLogistic(), samples, other, tmp_path, Runtime(), progress=False)


class TwoPhaseLogistic(PixelLogistic):
    """Alternates a pass that trains only the weight with one that trains only the bias."""

    def training_settings(self) -> TrainingSettings:
        return TrainingSettings(
            epochs=2, learning_rate=0.5, betas=(0.5, 0.999), batch_size=4, keep_epochs=(2,)
        )

    def training_phases(self, settings: TrainingSettings) -> list[TrainingPhase]:
        self.seen: list[tuple[str, tuple[float, float]]] = []

        def phase(name: str, parameter: nn.Parameter) -> TrainingPhase:
            optimizer = torch.optim.SGD([parameter], lr=settings.learning_rate)

            def step(batch: TrainingBatch) -> dict[str, torch.Tensor]:
                weight, bias = self.head.weight.detach(), self.head.bias.detach()
                self.seen.append((name, (float(weight.sum()), float(bias))))
                return self.training_loss(batch.images, batch.masks, batch.labels)

            return TrainingPhase(name, optimizer, step)

        return [phase("weight", self.head.weight), phase("bias", self.head.bias)]


def test_method_driven_phases_alternate_with_their_own_optimisers(samples, tmp_path) -> None:
    method = TwoPhaseLogistic()
    result = train_method(
        method, samples, method.training_settings(), tmp_path, Runtime(), progress=False
    )
    # Within a phase only that phase's parameter moves (plain SGD: a hand-checkable rule).
    names = [name for name, _ in method.seen]
    assert names == ["weight"] * 2 + ["bias"] * 2 + ["weight"] * 2 + ["bias"] * 2
    for (name, before), (next_name, after) in zip(method.seen, method.seen[1:], strict=False):
        if name == next_name == "weight":
            assert before[1] == after[1] and before[0] != after[0]
        if name == next_name == "bias":
            assert before[0] == after[0] and before[1] != after[1]
    rows = result.log.read_text().splitlines()
    assert rows[0].split(",")[:4] == ["epoch", "step", "global_step", "phase"]
    assert [row.split(",")[3] for row in rows[1:]] == names
    assert [int(row.split(",")[2]) for row in rows[1:]] == list(range(1, 9))
    kept = load_checkpoint(tmp_path / "checkpoint_epoch2.safetensors")
    assert torch.equal(kept["bias"], method.head.bias.detach())
    assert not (tmp_path / "checkpoint_epoch1.safetensors").exists()
    optimizers = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert set(optimizers) == {"weight", "bias"}


# PixelLogistic as a plugin distribution, for `ad train` through the entry point (the tests
# folder goes on its PYTHONPATH)
TRAINABLE_PLUGIN = """
from adcore.api import Capability, MethodSpec, PluginConfig, hookimpl
from trainables import PixelLogistic

class Config(PluginConfig):
    pass

@hookimpl
def adcore_methods():
    return [MethodSpec(name="tiny-trainable", summary="a 1x1 convolution", config=Config,
                       factory=lambda config, runtime: PixelLogistic(),
                       capabilities={Capability.ZERO_SHOT, Capability.TRAINABLE})]
"""


def test_ad_train_refuses_a_bad_sample_before_training_or_skips_and_names_it(tmp_path) -> None:
    """A mask whose size differs from its image: one paragraph naming the file and the fix,
    no traceback, nothing trained; --skip-bad-samples (or data.skip_bad_samples) trains on
    the rest and names the file left out."""
    from PIL import Image

    from adtest import run_ad, write_distribution

    root = write_mvtec_tree(tmp_path / "data", ("widget",), 1, 2, 3, size=32)
    wrong = root / "widget/ground_truth/square/001_mask.png"
    Image.new("L", (64, 48), 255).save(wrong)
    site = write_distribution(
        tmp_path / "site", "tiny-trainable-ad-plugin", TRAINABLE_PLUGIN, "tiny"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parent)])}
    args = [
        "train", "--method", "tiny-trainable", "--dataset", "folder", "--data-root", str(root),
        "--output", str(tmp_path / "out"), "--no-progress", "--set", "data.num_workers=0",
    ]  # fmt: skip
    run = tmp_path / "out/folder/tiny-trainable/default"

    stopped = run_ad(*args, env=env)
    assert stopped.returncode == 1
    assert "Traceback" not in stopped.stdout + stopped.stderr
    assert "DataLoader" not in stopped.stderr
    message = stopped.stderr.strip()
    assert message.startswith("Error:") and "\n\n" not in message
    assert str(wrong) in message and "64x48" in message and "--skip-bad-samples" in message
    assert not (run / "checkpoint.safetensors").exists()

    for option in (["--skip-bad-samples"], ["--set", "data.skip_bad_samples=true"]):
        skipped = run_ad(*args, *option, "--restart", env=env)
        assert skipped.returncode == 0, skipped.stderr
        assert "skipped 1 bad sample" in skipped.stdout and str(wrong) in skipped.stdout
        assert (run / "checkpoint.safetensors").is_file()


def test_a_data_error_in_a_loader_worker_keeps_its_own_message() -> None:
    """PyTorch re-raises a worker's exception as "Caught DataError in DataLoader worker
    process 0. Original Traceback ..."; the error the user sees is the original paragraph."""
    from torch.utils.data import DataLoader

    from adcore.infra.errors import DataError

    class Broken(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int):
            raise DataError("Mask m.png is 2x2 but its image i.png is 1x1.", "Fix the pair.")

    with pytest.raises(DataError) as caught:
        list(DataLoader(Broken(), num_workers=1))
    assert str(caught.value) == "Mask m.png is 2x2 but its image i.png is 1x1. Fix the pair."
    assert caught.value.exit_code == 1
