"""AF-CLIP and miniCLIP equal the authors' code stage by stage, on shared random weights.

The reference is ``authors_reference.py``: a transcription of github Faustinaqq/AF-CLIP
(commit bb7edec) and github suniverse77/miniCLIP ``af_tiny`` (commit e8ffb70), validated once
against those repositories' own modules (bitwise on outputs and losses, 2e-6 relative on
gradients; see its docstring). Inputs are image and mask files, two of them not square
(61 x 45 and 40 x 61 px) and one already at the method's side: ours go through the host
loader with the method's declared ``geometry``, the authors' through their data set code
(bicubic stretch, soft bicubic masks). Images and soft masks agree exactly, and so do the
patch targets and the evaluation ground truth (soft mask > 0.5); the non-square defects are
chosen so that nearest-neighbour masks (the host's before masks followed the declared
``mask_filter``) would give other patch targets (``assert_same_targets``). Trained parts
are files in the authors' released formats, loaded through ``model.checkpoint`` on our side
and as the authors' ``main.py`` loads them on theirs. On these files the loss terms agree to
5e-6 and gradients to 1.1e-5 of each tensor's largest entry; nearest-neighbour masks would
change the total loss by 0.088 (AF-CLIP, 48 px) and 0.061 (miniCLIP, 90 px). miniCLIP has
no few-shot path (af_tiny parses ``--fewshot`` but never reads it). Tolerance: 1e-4.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import authors_reference as ref
from ad_afclip.clip_models import register_model_config
from ad_afclip.config import AFCLIPConfig, MiniCLIPConfig
from ad_afclip.method import AFCLIPMethod, MiniCLIPMethod
from ad_afclip.model import grid_labels
from ad_afclip.tinyclip import TINYCLIP_8M
from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.dataset import Sample
from adcore.contracts.method import FitContext, Runtime, TrainingBatch
from adcore.data.loading import SampleImages, collate
from adcore.infra.errors import WeightsError

TOL = 1e-4
AF_TINY = "afclip-parity-vit"
register_model_config(
    AF_TINY,
    {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                     "layers": 2},
    },
)  # fmt: skip

Defect = tuple[int, int, int, int] | None  # mask rows top:bottom, columns left:right


@dataclass
class Inputs:
    """One batch of files as each side reads it."""

    images: torch.Tensor  # uint8 [B, 3, S, S]: the host loader with our geometry
    masks: torch.Tensor  # float [B, S, S] 0/1: the host loader's ground truth (soft > 0.5)
    soft: torch.Tensor  # float [B, S, S] in [0, 1]: its soft masks, what training gets
    nearest: torch.Tensor  # float [B, S, S] 0/1: the same masks resized nearest-neighbour
    theirs: torch.Tensor  # float [B, 3, S, S]: the authors' transform, normalised
    gts: torch.Tensor  # float [B, 1, S, S]: the authors' target transform (bicubic, soft)
    labels: torch.Tensor  # long [B]


# Defects of the 45 x 61 px file whose soft bicubic masks give other patch targets than
# nearest-neighbour masks would: at 48 px (6 x 6 grid) three patches of 1 where nearest gives
# 0.5; at 90 px (5 x 5 grid) three targets, and one ground-truth pixel, differ.
NON_SQUARE_DEFECTS = {48: (8, 30, 15, 45), 90: (0, 26, 6, 35)}


def batch_shapes(side: int) -> list[tuple[int, int, Defect]]:
    """(height, width, defect): 45 x 61 px with a defect (``NON_SQUARE_DEFECTS``), 61 x 40 px
    normal, and one of the method's side with a defect; at 90 px (5 x 5 grid) its top edge
    lies halfway between two bilinear sampling points: a patch target of exactly 0.5."""
    return [(45, 61, NON_SQUARE_DEFECTS[side]), (61, 40, None),
            (side, side, (side // 2, side, 0, side // 3))]  # fmt: skip


def read_both(
    folder: Path, shapes: list[tuple[int, int, Defect]], geometry: Preprocessing, seed: int
) -> Inputs:
    """Write random RGB images (and 0/255 masks) as PNG files; read them both ways."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index, (height, width, defect) in enumerate(shapes):
        pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
        image_path, mask_path = folder / f"{index}.png", None
        Image.fromarray(pixels.numpy()).save(image_path)
        if defect is not None:
            mask = np.zeros((height, width), np.uint8)
            top, bottom, left, right = defect
            mask[top:bottom, left:right] = 255
            mask_path = folder / f"{index}_mask.png"
            Image.fromarray(mask).save(mask_path)
        samples.append(Sample(image_path=image_path, label=int(defect is not None),
                              category="bottle", mask_path=mask_path))  # fmt: skip
    loaded = SampleImages(samples, geometry, soft_masks=True)  # as ad train loads them
    batch = collate([loaded[index] for index in range(len(samples))])
    nearest = SampleImages(samples, geometry.model_copy(update={"mask_filter": "nearest"}))
    theirs = [ref.dataset_item(s.image_path, s.mask_path, geometry.size) for s in samples]
    return Inputs(
        images=batch["image"],
        masks=batch["mask"].float(),
        soft=batch["soft_mask"],  # as adcore.run.training hands them to the method
        nearest=torch.stack([nearest[index]["mask"] for index in range(len(samples))]).float(),
        theirs=torch.stack([image for image, _ in theirs]),
        gts=torch.stack([gt for _, gt in theirs]),
        labels=batch["label"],
    )


def assert_same_inputs(geometry: Preprocessing, inputs: Inputs) -> None:
    """Our declared preprocessing equals the authors' transform (both PIL bicubic)."""
    assert geometry.output_size == inputs.theirs.shape[-1]
    torch.testing.assert_close(geometry.normalize(inputs.images), inputs.theirs, atol=1e-6,
                               rtol=0)  # fmt: skip


def assert_same_targets(inputs: Inputs, grid: int) -> None:
    """Our soft masks are the authors' bicubic masks, bitwise; the patch targets from them
    equal the authors', and our evaluation ground truth is their ``gt > 0.5``. Nearest-
    neighbour masks would give other targets here (at 48 px, 0.5 on three patches where the
    authors' give 1: a loss larger by 0.09, map focal 0.075 and map L1 0.014)."""
    assert torch.equal(inputs.soft, inputs.gts[:, 0])
    theirs = ref.mask_targets(inputs.gts.clone(), (grid, grid))[:, 0]
    assert torch.equal(grid_labels(inputs.soft, grid), theirs)
    assert not torch.equal(grid_labels(inputs.nearest, grid), theirs)
    assert torch.equal(inputs.masks, (inputs.gts[:, 0] > 0.5).float())


def perturbed(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The module's tensors plus noise, so LayerNorm affines and biases matter too."""
    return {
        k: v.detach() + 0.05 * torch.randn(v.shape, generator=generator)
        for k, v in module.state_dict().items()
    }


def clip_state(method: AFCLIPMethod) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method._clip.state_dict().items()}


# -- miniCLIP -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory):
    """Our miniCLIP on a random TinyCLIP-8M at 90 px (a 5 x 5 grid, 10 px uncovered), trained
    parts written as af_tiny's epoch 6 and 8 files of one run and loaded through
    ``model.checkpoint`` (the latest epoch); the reference reads them as af_tiny's test mode."""
    torch.manual_seed(0)
    blank = MiniCLIPMethod(MiniCLIPConfig(pretrained="none", resolution=90), Runtime())
    generator = torch.Generator().manual_seed(1)
    folder = tmp_path_factory.mktemp("small-alter-prompt2")
    trained = {}
    for epoch in (6, 8):
        textual = {"text_adapter": perturbed(blank.model.text.adapter, generator)}
        attention = perturbed(blank.model.attn_adapter, generator)
        visual = {
            "attn_adapter": {  # the authors' module names
                ("attention." if k.startswith("norm") else "attention.attn.")
                + k.replace("to_out.", "to_out.0."): v
                for k, v in attention.items()
            },
            "cls_proj": perturbed(blank.model.cls_proj, generator),
        }
        torch.save(textual, folder / f"{epoch}_mvtec_textual.pt")
        torch.save(visual, folder / f"{epoch}_mvtec_visual.pt")
        textual = torch.load(folder / f"{epoch}_mvtec_textual.pt", map_location="cpu")
        visual = torch.load(folder / f"{epoch}_mvtec_visual.pt", map_location="cpu")
        trained[epoch] = {
            **{f"text_adapter.{k}": v for k, v in textual["text_adapter"].items()},
            **{f"attn_adapter.{k}": v for k, v in visual["attn_adapter"].items()},
            **{f"cls_proj.{k}": v for k, v in visual["cls_proj"].items()},
        }
    config = MiniCLIPConfig(pretrained="none", resolution=90, checkpoint=str(folder))
    method = MiniCLIPMethod(config, Runtime())
    assert method.weights_identity()["checkpoint"] == str(folder / "8_mvtec_visual.pt")
    inputs = read_both(tmp_path_factory.mktemp("mini-files"), batch_shapes(90), method.geometry, 4)
    return method, folder, trained, inputs, clip_state(method)


def mini_tokens(aliases: list[str]) -> torch.Tensor:
    tokenizer = open_clip.get_tokenizer(TINYCLIP_8M)
    pairs = [[f"a photo of {a} without defect.", f"a photo of {a} with defect."] for a in aliases]
    return torch.stack([tokenizer(pair) for pair in pairs])  # [B, 2, 77]


def test_miniclip_zero_shot_scores_and_maps_equal_the_authors(mini) -> None:
    """Maps at the side of the authors' transformed image (90 x 90 for every file size: the
    authors evaluate there; ``evaluation.resolution: original`` is ours, after this)."""
    method, _, trained, inputs, clip = mini
    assert_same_inputs(method.geometry, inputs)
    method.fit(FitContext("metal_nut", "metal nut", 0, []))
    with torch.no_grad():
        ours = method.predict(inputs.images)
        label, predict_map, _ = ref.mini_forward(
            clip, trained[8], mini_tokens(["a metal nut"] * 3), inputs.theirs
        )
    assert torch.allclose(ours.scores, label, atol=TOL)
    expected = torch.from_numpy(ref.final_maps(predict_map, 90))
    assert ours.maps.shape == expected.shape == (3, 90, 90)
    assert torch.allclose(ours.maps, expected, atol=TOL)
    # Stage by stage: the fused patch features and the class embedding.
    with torch.no_grad():
        tokens = method.model.frozen_tokens(method.geometry.normalize(inputs.images))
        cls, patches = method.model.encode_image(tokens)
        ref_cls, ref_patches = ref.mini_image(clip, trained[8], inputs.theirs)
    assert torch.allclose(cls, ref_cls[:, 0], atol=TOL)
    assert torch.allclose(patches, ref_patches, atol=TOL)


def test_miniclip_losses_and_gradients_equal_the_authors(mini) -> None:
    method, _, trained, inputs, clip = mini
    assert_same_targets(inputs, 5)
    assert (grid_labels(inputs.soft, 5) == 0.5).any()
    assert not torch.equal(inputs.masks, inputs.nearest)  # one ground-truth pixel differs
    categories, names = ("bottle", "carpet", "bottle"), ("bottle", "carpet", "bottle")
    for parameter in method.model.trainable().values():
        parameter.requires_grad_(True)
        parameter.grad = None
    batch = TrainingBatch(inputs.images, inputs.soft, inputs.labels, categories, names)
    losses = method.training_step(batch)
    losses["loss"].backward()

    weights = {k: v.clone().requires_grad_(True) for k, v in trained[8].items()}
    label, predict_map, feature = ref.mini_forward(
        clip, weights, mini_tokens(["a bottle", "carpet", "a bottle"]), inputs.theirs
    )
    expected = ref.mini_losses(label, predict_map, feature, inputs.labels, inputs.gts.clone())
    expected["loss"].backward()
    for name in ("loss", "image_focal", "map_focal", "map_l1", "alignment"):
        assert losses[name].item() == pytest.approx(expected[name].item(), abs=TOL), name
    ours = method.model.trainable()
    for name, weight in weights.items():
        mine = name.replace("attention.attn.", "").replace("attention.", "")
        mine = mine.replace("to_out.0.", "to_out.")
        scale = weight.grad.abs().max()
        assert torch.allclose(ours[mine].grad, weight.grad, atol=TOL * scale), name


def test_alignment_loss_and_its_gradient_equal_the_authors() -> None:
    """Features where opposite states are closer than same states (the loss is positive):
    image 0 has both states along one direction, image 1 only normal, scattered tokens."""
    from ad_afclip.losses import patch_alignment_loss
    from ad_afclip.model import grid_labels

    generator = torch.Generator().manual_seed(3)
    direction = torch.randn(8, generator=generator)
    feature = torch.randn(2, 16, 8, generator=generator)
    feature[0] = direction + 0.1 * feature[0]
    raw = feature.requires_grad_(True)  # the model's fused features are unit: normalise here
    gts = torch.zeros(2, 1, 32, 32)
    gts[0, :, :16, :16] = 1
    dummy = torch.full((2,), 0.5), torch.full((2, 1, 4, 4), 0.5)
    unit = torch.nn.functional.normalize(raw, dim=-1)
    expected = ref.mini_losses(*dummy, unit, torch.tensor([1, 0]), gts)["alignment"]
    expected.backward()
    reference_grad, raw.grad = raw.grad.clone(), None
    unit = torch.nn.functional.normalize(raw, dim=-1)
    ours = patch_alignment_loss(unit[None], grid_labels(gts[:, 0], 4).flatten(1))
    ours.backward()
    assert expected.item() > 0.05
    assert ours.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(raw.grad, reference_grad, atol=1e-6)


def test_released_map_focal_gradient_equals_the_authors() -> None:
    """The map focal loss's gradient after the alignment loss rewrote its targets (both
    authors' training loops), on maps with large probabilities on normal patches: the extra
    gradient grows like p^gamma, below the end-to-end tests' tolerance on their small maps."""
    from ad_afclip.losses import focal_loss, released_focal_gradient

    generator = torch.Generator().manual_seed(7)
    logit = (torch.randn(2, 1, 4, 4, generator=generator) + 1).requires_grad_(True)
    gts = torch.zeros(2, 1, 32, 32)
    gts[0, :, :16, 8:] = 1
    unit = torch.nn.functional.normalize(torch.randn(2, 16, 8, generator=generator), dim=-1)
    dummy = torch.full((2,), 0.5)
    expected = ref.mini_losses(dummy, torch.sigmoid(logit), unit, torch.tensor([1, 0]), gts)
    expected["map_focal"].backward()
    reference_grad, logit.grad = logit.grad.clone(), None
    target = grid_labels(gts[:, 0], 4)
    plain = focal_loss(logit[:, 0], target)
    (plain + released_focal_gradient(logit[:, 0], target)).backward()
    assert plain.item() == pytest.approx(expected["map_focal"].item(), abs=1e-6)
    assert torch.allclose(logit.grad, reference_grad, atol=1e-6)
    logit.grad = None
    focal_loss(logit[:, 0], target).backward()  # the paper's plain focal gradient
    assert (logit.grad - reference_grad).abs().max() > 1e-2


def test_released_focal_losses_equal_the_authors_at_saturation() -> None:
    """Normal patches and a normal image with logit differences of 17 to 20, where the
    authors' softmax rounds p to 1 in float32: their losses (BCE's log clamped at -100) and
    their gradients on both logits (BCE's 1e12-scaled backward through the softmax, the map's
    after the alignment loss rewrote its targets) against ours on the same two logits."""
    from ad_afclip.losses import released_focal_gradient, released_focal_loss

    generator = torch.Generator().manual_seed(8)
    difference = torch.empty(2, 1, 4, 4).uniform_(17.0, 20.0, generator=generator)
    difference[0, :, :2, 2:] = -3.0  # the defect's patches, unsaturated
    pair = torch.stack([torch.zeros_like(difference), difference], dim=-1).requires_grad_(True)
    image_pair = torch.tensor([[0.0, 2.0], [0.0, 18.0]], requires_grad=True)
    gts = torch.zeros(2, 1, 32, 32)
    gts[0, :, :16, 16:] = 1
    labels = torch.tensor([1, 0])
    unit = torch.nn.functional.normalize(torch.randn(2, 16, 8, generator=generator), dim=-1)
    label = torch.softmax(image_pair, dim=-1)[:, 1]
    predict_map = torch.softmax(pair, dim=-1)[..., 1]
    expected = ref.mini_losses(label, predict_map, unit, labels, gts)
    (expected["image_focal"] + expected["map_focal"]).backward()
    their_map_grad, their_image_grad = pair.grad.clone(), image_pair.grad.clone()
    pair.grad, image_pair.grad = None, None

    target = grid_labels(gts[:, 0], 4)
    image = released_focal_loss(image_pair, labels)
    map_focal = released_focal_loss(pair[:, 0], target)
    (image + map_focal + released_focal_gradient(pair[:, 0], target)).backward()
    assert image.item() == pytest.approx(expected["image_focal"].item(), rel=1e-6)
    assert map_focal.item() == pytest.approx(expected["map_focal"].item(), rel=1e-6)
    assert expected["map_focal"].item() > 50  # the clamp decides it (paper form: about 18)
    torch.testing.assert_close(image_pair.grad, their_image_grad, rtol=1e-5, atol=0)
    largest = float(their_map_grad.abs().max())  # ~1e3 per element: 1e12 / 256 * p_n
    torch.testing.assert_close(pair.grad, their_map_grad, rtol=1e-5, atol=1e-6 * largest)


def test_miniclip_checkpoint_epoch_and_file_pick_the_authors_files(mini) -> None:
    method, folder, trained, _, _ = mini
    state = method.model.trainable()
    assert torch.equal(state["cls_proj.mlp.0.weight"], trained[8]["cls_proj.mlp.0.weight"])
    sixth = MiniCLIPMethod(
        MiniCLIPConfig(pretrained="none", resolution=90, checkpoint=str(folder),
                       checkpoint_epoch=6),
        Runtime(),
    )  # fmt: skip
    assert torch.equal(
        sixth.model.trainable()["text_adapter.mlp.4.bias"],
        trained[6]["text_adapter.mlp.4.bias"],
    )
    identity = sixth.weights_identity()
    assert identity["checkpoint"].endswith("6_mvtec_visual.pt")
    assert sorted(Path(f).name for f in identity["released_files"]) == [
        "6_mvtec_textual.pt",
        "6_mvtec_visual.pt",
    ]
    one_file = MiniCLIPMethod(
        MiniCLIPConfig(pretrained="none", resolution=90,
                       checkpoint=str(folder / "6_mvtec_textual.pt")),
        Runtime(),
    )  # fmt: skip
    assert torch.equal(one_file.model.trainable()["cls_proj.shortcut.1.bias"],
                       trained[6]["cls_proj.shortcut.1.bias"])  # fmt: skip
    with pytest.raises(WeightsError, match=r"epoch 7 \(it has \[6, 8\]\)"):
        method.config = method.config.model_copy(update={"checkpoint_epoch": 7})
        method.load_checkpoint_file(folder)
    method.config = method.config.model_copy(update={"checkpoint_epoch": None})


def test_released_files_that_do_not_fit_are_one_clear_error(mini, tmp_path: Path) -> None:
    method, folder, _, _, _ = mini
    # An earlier layout of that repository (learned prompt, cls_adapter) is named as such.
    torch.save({"prompt": torch.zeros(1, 12, 256)}, tmp_path / "12_visa_textual.pt")
    torch.save({"attn_adapter": {}, "cls_adapter": {}}, tmp_path / "12_visa_visual.pt")
    with pytest.raises(WeightsError, match="earlier layout"):
        method.load_checkpoint_file(tmp_path)
    # Files of another backbone width: the wrong shapes are listed.
    wide = tmp_path / "wide"
    wide.mkdir()
    textual = torch.load(folder / "8_mvtec_textual.pt", weights_only=True)
    textual["text_adapter"]["mlp.0.weight"] = torch.zeros(128, 512)
    torch.save(textual, wide / "8_mvtec_textual.pt")
    (wide / "8_mvtec_visual.pt").write_bytes((folder / "8_mvtec_visual.pt").read_bytes())
    with pytest.raises(WeightsError, match=r"wrong shape \['text_adapter.mlp.0.weight"):
        method.load_checkpoint_file(wide)
    # AF-CLIP's files given to miniCLIP point to the right method.
    torch.save(torch.zeros(1, 4, 64), tmp_path / "mvtec_prompt.pt")
    with pytest.raises(WeightsError, match="--method afclip"):
        method.load_checkpoint_file(tmp_path / "mvtec_prompt.pt")


def test_miniclip_trains_in_alternating_phases_and_keeps_epochs(mini, tmp_path) -> None:
    from adcore.run.training import train_method
    from adtest import write_mvtec_tree

    root = write_mvtec_tree(tmp_path / "mvtec", ("bottle",), num_good=2, num_bad=2)
    samples = [
        Sample(
            image_path=p, label=int(p.parent.name != "good"), category="bottle",
            mask_path=(root / "bottle/ground_truth" / p.parent.name / f"{p.stem}_mask.png")
            if p.parent.name != "good" else None,
        )
        for p in sorted((root / "bottle/test").glob("*/*.png"))
    ]  # fmt: skip
    torch.manual_seed(0)
    method = MiniCLIPMethod(
        MiniCLIPConfig(pretrained="none", resolution=64, epochs=2, batch_size=2,
                       keep_epochs=[2]),
        Runtime(),
    )  # fmt: skip
    visual_before = {k: v.clone() for k, v in method.model.trainable().items()}
    result = train_method(
        method, samples, method.training_settings(), tmp_path / "run", Runtime(),
        progress=False, class_names={"bottle": "bottle"},
    )  # fmt: skip
    rows = result.log.read_text().splitlines()
    phases = [row.split(",")[3] for row in rows[1:]]
    assert phases == ["textual", "textual", "visual", "visual"] * 2
    assert (tmp_path / "run" / "checkpoint_epoch2.safetensors").is_file()
    moved = {k for k, v in method.model.trainable().items() if not torch.equal(v, visual_before[k])}
    assert any(k.startswith("text_adapter.") for k in moved)
    assert any(k.startswith("cls_proj.") for k in moved)
    # The run folder loads, by epoch, into identical trained parts (same random backbone).
    torch.manual_seed(0)
    again = MiniCLIPMethod(
        MiniCLIPConfig(pretrained="none", resolution=64, checkpoint=str(tmp_path / "run"),
                       checkpoint_epoch=2),
        Runtime(),
    )  # fmt: skip
    for name, value in method.model.trainable().items():
        assert torch.equal(again.model.trainable()[name], value), name


# -- AF-CLIP ------------------------------------------------------------------------------


def pickled_adaptor(state: dict[str, torch.Tensor], path: Path, monkeypatch) -> None:
    """Write ``torch.save(module)`` of a module tree named as the authors' clip/adaptor.py."""
    package, module = types.ModuleType("clip"), types.ModuleType("clip.adaptor")
    monkeypatch.setitem(sys.modules, "clip", package)
    monkeypatch.setitem(sys.modules, "clip.adaptor", module)
    classes = {}
    for name in ("Adaptor", "BasicTransformerBlock", "CrossAttention"):
        cls = type(name, (torch.nn.Module,), {"__module__": "clip.adaptor"})
        setattr(module, name, cls)
        classes[name] = cls
    width, inner = state["norm.weight"].shape[0], state["to_q.weight"].shape[0]
    attn = classes["CrossAttention"]()
    attn.scale, attn.heads = 64**-0.5, 8
    attn.to_q = torch.nn.Linear(width, inner, bias=False)
    attn.to_k = torch.nn.Linear(width, inner, bias=False)
    attn.to_v = torch.nn.Linear(width, inner, bias=False)
    attn.to_out = torch.nn.Sequential(torch.nn.Linear(inner, width), torch.nn.Dropout(0.0))
    block = classes["BasicTransformerBlock"]()
    block.attn, block.norm = attn, torch.nn.LayerNorm(width)
    adaptor = classes["Adaptor"]()
    adaptor.attention = block
    with torch.no_grad():
        for name, value in state.items():
            target = {"norm": block.norm, "to_out": attn.to_out[0]}.get(name.split(".")[0])
            owner = target or getattr(attn, name.split(".")[0])
            getattr(owner, name.split(".")[-1]).copy_(value)
    torch.save(adaptor, path)


@pytest.fixture(scope="module")
def afclip(tmp_path_factory: pytest.TempPathFactory):
    """Our AF-CLIP on a random 4-block ViT at 48 px (a 6 x 6 grid), its prompt and adaptor
    written as the authors' ``weight/mvtec_prompt.pt`` and ``mvtec_adaptor.pt`` and loaded
    through ``model.checkpoint``; the reference reads them as the authors' ``main.py``."""
    torch.manual_seed(0)
    config = dict(backbone=AF_TINY, pretrained="none", resolution=48, layers=[2, 4],
                  prompt_length=4)  # fmt: skip
    blank = AFCLIPMethod(AFCLIPConfig(**config), Runtime())
    generator = torch.Generator().manual_seed(2)
    adaptor = perturbed(blank.model.adaptor, generator)
    prompt = torch.nn.Parameter(0.3 * torch.randn(1, 4, 64, generator=generator))
    folder = tmp_path_factory.mktemp("weight")
    torch.save(prompt, folder / "mvtec_prompt.pt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        pickled_adaptor(adaptor, folder / "mvtec_adaptor.pt", monkeypatch)
        prompt = torch.load(folder / "mvtec_prompt.pt", weights_only=False)
        module = torch.load(folder / "mvtec_adaptor.pt", weights_only=False)
    trained = {"prompt": prompt.detach()}
    trained.update({f"adaptor.{k}": v.detach() for k, v in module.state_dict().items()})
    method = AFCLIPMethod(AFCLIPConfig(**config, checkpoint=str(folder)), Runtime())
    released = method.weights_identity()["released_files"]
    assert sorted(Path(f).name for f in released) == ["mvtec_adaptor.pt", "mvtec_prompt.pt"]
    inputs = read_both(tmp_path_factory.mktemp("af-files"), batch_shapes(48), method.geometry, 5)
    support = read_both(tmp_path_factory.mktemp("af-support"), [(37, 50, None), (66, 37, None)],
                        method.geometry, 6)  # fmt: skip
    tokens = open_clip.get_tokenizer(AF_TINY)(["without defect.", "with defect."])
    return method, trained, inputs, support, tokens, clip_state(method)


def test_afclip_zero_and_few_shot_equal_the_authors(afclip) -> None:
    """Maps at 48 x 48, the authors' transformed side, for every file size."""
    method, trained, inputs, support, tokens, clip = afclip
    assert_same_inputs(method.geometry, inputs)
    assert_same_inputs(method.geometry, support)
    method.fit(FitContext("bottle", "bottle", 0, []))
    with torch.no_grad():
        zero = method.predict(inputs.images)
        cls, predict_map, _ = ref.afclip_forward(clip, trained, tokens, inputs.theirs, [2, 4])
    assert torch.allclose(zero.scores, cls, atol=TOL)
    expected = torch.from_numpy(ref.final_maps(predict_map, 48))
    assert zero.maps.shape == expected.shape == (3, 48, 48)
    assert torch.allclose(zero.maps, expected, atol=TOL)

    method.fit(FitContext("bottle", "bottle", 2, [support.images]))
    with torch.no_grad():
        few = method.predict(inputs.images)
        scores, maps = ref.afclip_memory(
            clip, support.theirs, inputs.theirs, [2, 4], 0.1, cls, predict_map
        )
    method.bank = None
    assert torch.allclose(few.scores, scores, atol=TOL)
    assert torch.allclose(few.maps, torch.from_numpy(ref.final_maps(maps, 48)), atol=TOL)


def test_afclip_losses_and_gradients_equal_the_authors(afclip) -> None:
    method, trained, inputs, _, tokens, clip = afclip
    assert_same_targets(inputs, 6)
    for parameter in method.model.trainable().values():
        parameter.requires_grad_(True)
        parameter.grad = None
    losses = method.training_loss(inputs.images, inputs.soft, inputs.labels)
    losses["loss"].backward()
    weights = {k: v.clone().requires_grad_(True) for k, v in trained.items()}
    cls, predict_map, adapted = ref.afclip_forward(clip, weights, tokens, inputs.theirs, [2, 4])
    expected = ref.afclip_losses(cls, predict_map, adapted, inputs.labels, inputs.gts.clone())
    expected["loss"].backward()
    for name in ("loss", "image_focal", "map_focal", "map_l1", "alignment"):
        assert losses[name].item() == pytest.approx(
            float(torch.as_tensor(expected[name]).detach()), abs=TOL
        ), name
    ours = method.model.trainable()
    for name, weight in weights.items():
        mine = "prompts.context" if name == "prompt" else name.replace("attention.attn.", "")
        mine = mine.replace("attention.", "").replace("to_out.0.", "to_out.")
        scale = weight.grad.abs().max()
        assert torch.allclose(ours[mine].grad, weight.grad, atol=TOL * scale), name


def test_afclip_released_files_of_another_backbone_are_refused(afclip, tmp_path) -> None:
    method, *_ = afclip
    torch.save(torch.zeros(1, 12, 768), tmp_path / "visa_prompt.pt")
    with pytest.raises(WeightsError, match=r"visa_adaptor\.pt is missing"):
        method.load_checkpoint_file(tmp_path / "visa_prompt.pt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        state = {
            "to_q.weight": torch.zeros(512, 1024), "to_k.weight": torch.zeros(512, 1024),
            "to_v.weight": torch.zeros(512, 1024), "to_out.weight": torch.zeros(1024, 512),
            "to_out.bias": torch.zeros(1024), "norm.weight": torch.ones(1024),
            "norm.bias": torch.zeros(1024),
        }  # fmt: skip
        pickled_adaptor(state, tmp_path / "visa_adaptor.pt", monkeypatch)
    with pytest.raises(WeightsError, match=r"wrong shape \[.prompts.context \(1, 12, 768\)"):
        method.load_checkpoint_file(tmp_path)
