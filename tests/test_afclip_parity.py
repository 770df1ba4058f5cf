"""AF-CLIP and miniCLIP equal the authors' code stage by stage, on shared random weights.

The reference is ``authors_reference.py``: a transcription of github Faustinaqq/AF-CLIP
(commit bb7edec) and github suniverse77/miniCLIP ``af_tiny`` (commit e8ffb70), validated once
against those repositories' own modules (bitwise on outputs and losses, 2e-6 relative on
gradients; see its docstring). Our methods get their trained parts from files written in
the authors' released formats, so the loaders are tested on the way. Tolerance: 1e-4.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch

import authors_reference as ref
from ad_afclip.clip_models import register_model_config
from ad_afclip.method import AFCLIPMethod, MiniCLIPMethod
from ad_afclip.plugin import TINYCLIP_8M, AFCLIPConfig, MiniCLIPConfig
from adcore.dataset import Sample
from adcore.errors import WeightsError
from adcore.method import FitContext, Runtime, TrainingBatch
from adcore.preprocessing import CLIP_MEAN, CLIP_STD

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


def normalised(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> CLIP-normalised floats, written out independently of InputGeometry."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def perturbed(module: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The module's tensors plus noise, so LayerNorm affines and biases matter too."""
    return {
        k: v.detach() + 0.05 * torch.randn(v.shape, generator=generator)
        for k, v in module.state_dict().items()
    }


def clip_state(method: AFCLIPMethod) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method._clip.state_dict().items()}


def masks_and_labels(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, S, S] masks, [3] labels. At 90 px (5 x 5 grid) the second defect's top edge lies
    halfway between two bilinear sampling points: a patch target of exactly 0.5."""
    masks = torch.zeros(3, size, size)
    masks[0, 10 : size // 2 + 3, 20 : size - 15] = 1
    masks[2, size // 2 :, : size // 3] = 1
    return masks, torch.tensor([1, 0, 1])


# -- miniCLIP -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory):
    """Our miniCLIP on a random TinyCLIP-8M at 90 px (a 5 x 5 grid, 10 px uncovered), trained
    parts written as af_tiny's epoch 6 and 8 files of one run."""
    torch.manual_seed(0)
    method = MiniCLIPMethod(MiniCLIPConfig(pretrained="none", resolution=90), Runtime())
    generator = torch.Generator().manual_seed(1)
    folder = tmp_path_factory.mktemp("small-alter-prompt2")
    trained = {}
    for epoch in (6, 8):
        textual = {"text_adapter": perturbed(method.model.text.adapter, generator)}
        attention = perturbed(method.model.attn_adapter, generator)
        visual = {
            "attn_adapter": {  # the authors' module names
                ("attention." if k.startswith("norm") else "attention.attn.")
                + k.replace("to_out.", "to_out.0."): v
                for k, v in attention.items()
            },
            "cls_proj": perturbed(method.model.cls_proj, generator),
        }
        torch.save(textual, folder / f"{epoch}_mvtec_textual.pt")
        torch.save(visual, folder / f"{epoch}_mvtec_visual.pt")
        trained[epoch] = {
            **{f"text_adapter.{k}": v for k, v in textual["text_adapter"].items()},
            **{f"attn_adapter.{k}": v for k, v in visual["attn_adapter"].items()},
            **{f"cls_proj.{k}": v for k, v in visual["cls_proj"].items()},
        }
    method.load_checkpoint_file(folder)  # the latest epoch by default
    images = torch.randint(0, 256, (3, 3, 90, 90), dtype=torch.uint8, generator=generator)
    return method, folder, trained, images, clip_state(method)


def mini_tokens(aliases: list[str]) -> torch.Tensor:
    tokenizer = open_clip.get_tokenizer(TINYCLIP_8M)
    pairs = [[f"a photo of {a} without defect.", f"a photo of {a} with defect."] for a in aliases]
    return torch.stack([tokenizer(pair) for pair in pairs])  # [B, 2, 77]


def test_miniclip_zero_shot_scores_and_maps_equal_the_authors(mini) -> None:
    method, _, trained, images, clip = mini
    method.fit(FitContext("metal_nut", "metal nut", 0, []))
    with torch.no_grad():
        ours = method.predict(images)
        label, predict_map, _ = ref.mini_forward(
            clip, trained[8], mini_tokens(["a metal nut"] * 3), normalised(images)
        )
    assert torch.allclose(ours.scores, label, atol=TOL)
    expected = torch.from_numpy(ref.final_maps(predict_map, 90))
    assert ours.maps.shape == (3, 90, 90)
    assert torch.allclose(ours.maps, expected, atol=TOL)
    # Stage by stage: the fused patch features and the class embedding.
    with torch.no_grad():
        tokens = method.model.frozen_tokens(normalised(images))
        cls, patches = method.model.encode_image(tokens)
        ref_cls, ref_patches = ref.mini_image(clip, trained[8], normalised(images))
    assert torch.allclose(cls, ref_cls[:, 0], atol=TOL)
    assert torch.allclose(patches, ref_patches, atol=TOL)


def test_miniclip_losses_and_gradients_equal_the_authors(mini) -> None:
    method, _, trained, images, clip = mini
    masks, labels = masks_and_labels(90)
    categories, names = ("bottle", "carpet", "bottle"), ("bottle", "carpet", "bottle")
    for parameter in method.model.trainable().values():
        parameter.requires_grad_(True)
        parameter.grad = None
    losses = method.training_step(TrainingBatch(images, masks, labels, categories, names))
    losses["loss"].backward()

    weights = {k: v.clone().requires_grad_(True) for k, v in trained[8].items()}
    label, predict_map, feature = ref.mini_forward(
        clip, weights, mini_tokens(["a bottle", "carpet", "a bottle"]), normalised(images)
    )
    expected = ref.mini_losses(label, predict_map, feature, labels, masks[:, None])
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
    from adcore.training import train_method
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
    torch.manual_seed(0)
    config = AFCLIPConfig(backbone=AF_TINY, pretrained="none", resolution=48, layers=[2, 4],
                          prompt_length=4)  # fmt: skip
    method = AFCLIPMethod(config, Runtime())
    generator = torch.Generator().manual_seed(2)
    adaptor = perturbed(method.model.adaptor, generator)
    prompt = torch.nn.Parameter(0.3 * torch.randn(1, 4, 64, generator=generator))
    folder = tmp_path_factory.mktemp("weight")
    torch.save(prompt, folder / "mvtec_prompt.pt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        pickled_adaptor(adaptor, folder / "mvtec_adaptor.pt", monkeypatch)
    method.load_checkpoint_file(folder / "mvtec_adaptor.pt")
    trained = {"prompt": prompt.detach()}
    for name, value in adaptor.items():
        prefix = "adaptor.attention." if name.startswith("norm") else "adaptor.attention.attn."
        trained[prefix + name.replace("to_out.", "to_out.0.")] = value
    images = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8, generator=generator)
    tokens = open_clip.get_tokenizer(AF_TINY)(["without defect.", "with defect."])
    return method, trained, images, tokens, clip_state(method)


def test_afclip_zero_and_few_shot_equal_the_authors(afclip) -> None:
    method, trained, images, tokens, clip = afclip
    method.fit(FitContext("bottle", "bottle", 0, []))
    with torch.no_grad():
        zero = method.predict(images)
        cls, predict_map, _ = ref.afclip_forward(clip, trained, tokens, normalised(images), [2, 4])
    assert torch.allclose(zero.scores, cls, atol=TOL)
    assert torch.allclose(zero.maps, torch.from_numpy(ref.final_maps(predict_map, 48)), atol=TOL)

    support = images[:2].flip(-1)
    method.fit(FitContext("bottle", "bottle", 2, [support]))
    with torch.no_grad():
        few = method.predict(images)
        scores, maps = ref.afclip_memory(
            clip, normalised(support), normalised(images), [2, 4], 0.1, cls, predict_map
        )
    method.bank = None
    assert torch.allclose(few.scores, scores, atol=TOL)
    assert torch.allclose(few.maps, torch.from_numpy(ref.final_maps(maps, 48)), atol=TOL)


def test_afclip_losses_and_gradients_equal_the_authors(afclip) -> None:
    method, trained, images, tokens, clip = afclip
    masks, labels = masks_and_labels(48)
    for parameter in method.model.trainable().values():
        parameter.requires_grad_(True)
        parameter.grad = None
    losses = method.training_loss(images, masks, labels)
    losses["loss"].backward()
    weights = {k: v.clone().requires_grad_(True) for k, v in trained.items()}
    cls, predict_map, adapted = ref.afclip_forward(
        clip, weights, tokens, normalised(images), [2, 4]
    )
    expected = ref.afclip_losses(cls, predict_map, adapted, labels, masks[:, None])
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
    # The paper's plain focal gradient differs from the released training's.
    method.config = method.config.model_copy(update={"fidelity": "paper"})
    for parameter in ours.values():
        parameter.grad = None
    method.training_loss(images, masks, labels)["loss"].backward()
    method.config = method.config.model_copy(update={"fidelity": "authors_code"})
    adaptor = weights["adaptor.attention.attn.to_v.weight"].grad
    assert not torch.allclose(ours["adaptor.to_v.weight"].grad, adaptor, atol=TOL * 10)


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
