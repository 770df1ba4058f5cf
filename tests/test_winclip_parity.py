"""WinCLIP / WinCLIP+ end to end against an independent transcription of anomalib's WinCLIP.

The transcription below (``reference_*``) restates, in its own code, the arithmetic of
anomalib 2.7.0 ``src/anomalib/models/image/winclip/torch_model.py`` and ``utils.py``:

- image embedding and patch tokens from open_clip's own ``encode_image`` with
  ``output_tokens`` (patch tokens after ``ln_post``, unprojected);
- window embeddings as anomalib builds them: the tokens entering ``patch_dropout`` (class
  token and patches, positional embedding added) are captured with a forward hook; for every
  k x k window (stride 1, row-major) the class token and that window's patch tokens form one
  sequence, which goes through ``patch_dropout``, ``ln_pre``, the whole transformer,
  ``ln_post``, the class token and the projection;
- class scores: softmax over (normal, anomalous) of cosine / 0.07;
- harmonic aggregation of window scores per patch, the harmonic fusion of the scales with
  the image score broadcast over the grid;
- WinCLIP+: min over the references of (1 - cos) / 2 for patch tokens and window
  embeddings, window distances harmonically aggregated, the 1 + S visual maps averaged, map
  = (zero-shot + visual) / 2, score = (zero-shot score + max of the visual map) / 2;
- maps upsampled bilinearly (``align_corners=False``) to the input size.

It runs on a float64 copy of the model. Prototypes: both sides get the same text
prototypes; ours are built with ``prompt_average="raw"`` (anomalib's raw mean of the text
encoder's outputs) over our 21 templates (anomalib lists "a jpeg corrupted photo of the"
twice instead of once with "a"), and ``test_raw_prototypes_*`` checks them against the
transcription's own raw mean.

Validation of the transcription (once, by a script outside the repository): anomalib
2.7.0's ``WinClipModel`` with its CLIP built from this tiny config and loaded with the same
state dict; ``_text_embeddings`` set to the same prototypes (its own
``_collect_text_embeddings`` equals the transcription's raw mean over anomalib's prompt list
exactly); one reference through ``setup(reference_images=...)``; ``forward``,
``encode_image``, ``_compute_zero_shot_scores`` and ``_compute_few_shot_scores`` compared on
the same normalised tensors: two random 80 px images with one random reference, and a
130 x 97 image with a 97 x 130 reference through open_clip's ``image_transform``; zero-shot
and one-shot; float32 and float64. anomalib pins open-clip-torch < 2.26.1 and its window
path permutes to a sequence-first layout before the transformer, so it ran on open_clip
2.24.0 (the newest release its pin admits). Max abs differences: float64, scores and maps
3e-16, image / patch / window embeddings 2e-15; float32, scores and maps 2e-7, embeddings
1e-6. Under open_clip 3.3.0 (batch-first transformer, outside anomalib's pin) that permute
makes attention run across windows instead of within them: every window embedding is the
same vector (anomalib issue #2571) and the maps differ by up to 0.04; that is anomalib's bug
in an unsupported environment, not transcribed. caoyunkang/WinClip @ 0818c9d
(``WinCLIP/CLIPAD/transformer.py``, ``VisionTransformer.forward``) builds window sequences
the same way (class token + the window's tokens with positional embeddings, ``ln_pre``, a
sequence-first transformer, ``ln_post`` on the class token, projection).

Test tolerance: 1e-6 absolute on scores and maps (probabilities / halved cosine distances
in [0, 1]); ours runs in float32 and differs from the float64 transcription by at most 2e-7
here. Non-square: a 130 x 97 PNG goes through our declared preprocessing (host loader,
``method.geometry``) and, for the transcription, through open_clip's own
``image_transform(..., is_train=False)`` as a PIL image; the normalised inputs are equal
to 1e-6 (the preprocessing test's tolerance; here they are identical) and the outputs are
held to the same 1e-6.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ad_winclip.config import WinClipConfig
from ad_winclip.method import WinClipMethod
from ad_winclip.model import WinClipOutput
from ad_winclip.plugin import factory
from ad_winclip.prompts import prompt_ensemble
from adcore.contracts.dataset import Sample
from adcore.contracts.method import FitContext, Prediction, Runtime
from adcore.data.loading import SampleImages
from test_winclip import SIZE, TINY_CONFIG  # the same tiny ViT as the stage tests

TINY = "winclip-parity-tiny"
GRID = (5, 5)
SCALES = (2, 3)
TOL = 1e-6


# --- the transcription of anomalib's WinCLIP ----------------------------------------------


def reference_windows(grid: tuple[int, int], k: int) -> list[list[int]]:
    """Patch indices of each k x k window, stride 1; windows and their patches row-major."""
    h, w = grid
    return [
        [(top + i) * w + left + j for i in range(k) for j in range(k)]
        for top in range(h - k + 1)
        for left in range(w - k + 1)
    ]


def reference_prototypes(
    clip: nn.Module, tokenizer: Any, normal: list[str], anomalous: list[str]
) -> torch.Tensor:
    """Raw mean of each state's prompt embeddings (anomalib; not normalised) -> [2, D]."""
    with torch.no_grad():
        means = [
            clip.encode_text(tokenizer(prompts)).mean(dim=0) for prompts in (normal, anomalous)
        ]
    return torch.stack(means)


def reference_encode(
    clip: nn.Module, images: torch.Tensor, scales: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Image embeddings [B, D], patch tokens [B, P, C], window embeddings per scale [B, W, D]."""
    visual = clip.visual
    captured: list[torch.Tensor] = []
    hook = visual.patch_dropout.register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0])
    )
    try:
        visual.output_tokens = True
        image, patches = clip.encode_image(images)
    finally:
        hook.remove()
        visual.output_tokens = False
    tokens = captured[0]  # [B, 1+P, C]: class + patches, positional embedding added
    windows = []
    for k in scales:
        index = torch.tensor(
            [[0, *(p + 1 for p in window)] for window in reference_windows(GRID, k)]
        )
        batch, count = tokens.shape[0], index.shape[0]
        sequences = tokens[:, index].flatten(0, 1)  # [B*W, 1+k*k, C], one sequence per window
        x = visual.ln_pre(visual.patch_dropout(sequences))
        # open_clip 3.x transformers take [N, L, C] whatever their blocks' layout (anomalib's
        # permute to [L, N, C] was for the older sequence-first Transformer, see the docstring)
        x = visual.ln_post(visual.transformer(x))
        windows.append((x[:, 0] @ visual.proj).view(batch, count, -1))
    return image, patches, windows


def reference_class_scores(
    embeddings: torch.Tensor, text: torch.Tensor, temperature: float
) -> torch.Tensor:
    cosine = F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).T
    return (cosine / temperature).softmax(dim=-1)[..., 1]


def reference_harmonic(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Window scores [B, W] -> per-patch harmonic mean of the covering windows [B, h, w]."""
    patches = torch.arange(GRID[0] * GRID[1])[:, None, None]
    member = (torch.tensor(reference_windows(GRID, k))[None] == patches).any(dim=-1)  # [P, W]
    inverse = torch.where(member[None], 1.0 / scores[:, None, :], 0.0).sum(dim=-1)
    mean = member.sum(dim=-1) / inverse
    return mean.nan_to_num(posinf=0.0).view(-1, *GRID)


def reference_association(query: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """min over all reference rows of (1 - cos) / 2: [B, N, D], [K, N', D] -> [B, N]."""
    bank = F.normalize(references.reshape(-1, query.shape[-1]), dim=-1)
    return ((1.0 - F.normalize(query, dim=-1) @ bank.T).amin(dim=-1)) / 2.0


def reference_winclip(
    clip: nn.Module,
    text: torch.Tensor,
    images: torch.Tensor,
    references: torch.Tensor | None = None,
    temperature: float = 0.07,
    scales: Sequence[int] = SCALES,
) -> dict[str, torch.Tensor]:
    """The transcription end to end: normalised images -> scores, maps and their parts."""
    with torch.no_grad():
        image, patches, windows = reference_encode(clip, images, scales)
        image_score = reference_class_scores(image, text, temperature)
        scale_maps = torch.stack(
            [
                reference_harmonic(reference_class_scores(w, text, temperature), k)
                for w, k in zip(windows, scales, strict=True)
            ],
            dim=1,
        )  # [B, S, h, w]
        levels = torch.cat([image_score.view(-1, 1, 1, 1).expand(-1, 1, *GRID), scale_maps], 1)
        zero_shot = (len(scales) + 1) / (1.0 / levels).sum(dim=1)
        out = {
            "zero_shot_scores": image_score,
            "zero_shot_scale_maps": scale_maps,
            "zero_shot_map": zero_shot,
            "scores": image_score,
            "maps": zero_shot,
        }
        if references is not None:
            _, reference_patches, shot_windows = reference_encode(clip, references, scales)
            visual = [reference_association(patches, reference_patches).view(-1, *GRID)]
            for w, r, k in zip(windows, shot_windows, scales, strict=True):
                visual.append(reference_harmonic(reference_association(w, r), k))
            visual_maps = torch.stack(visual, dim=1)  # [B, 1+S, h, w]
            few_shot = visual_maps.mean(dim=1)
            out["visual_maps"] = visual_maps
            out["maps"] = (zero_shot + few_shot) / 2.0
            out["scores"] = (image_score + few_shot.amax(dim=(-2, -1))) / 2.0
        size = images.shape[-2:]
        out["pixel_maps"] = F.interpolate(out["maps"][:, None], size=size, mode="bilinear")[:, 0]
    return out


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY


def make_method(name: str, prompt_average: str = "raw") -> WinClipMethod:
    config = WinClipConfig(
        backbone=name,
        pretrained="none",
        resolution=SIZE,
        scales=list(SCALES),
        prompt_average=prompt_average,
    )
    return factory(config, Runtime(seed=0))


@pytest.fixture(scope="module")
def zero_shot(tiny_model_name: str) -> WinClipMethod:
    method = make_method(tiny_model_name)
    method.fit(FitContext(category="bottle", class_name="bottle", num_images=0))
    return method


@pytest.fixture(scope="module")
def reference_clip(zero_shot: WinClipMethod) -> nn.Module:
    """A float64 copy of the same weights for the transcription."""
    return copy.deepcopy(zero_shot.model.clip).double().eval()


def random_images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)


def one_shot(name: str, reference: torch.Tensor) -> WinClipMethod:
    """A fresh method (same seed, same weights) fitted on one reference image."""
    method = make_method(name)
    method.fit(
        FitContext(category="bottle", class_name="bottle", num_images=1, batches=[reference])
    )
    return method


def compare(
    ours: WinClipOutput,
    maps: torch.Tensor,
    scores: torch.Tensor,
    reference: dict[str, torch.Tensor],
) -> None:
    """Every part the transcription has, at TOL."""
    batch = scores.shape[0]

    def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
        torch.testing.assert_close(actual.double(), expected, atol=TOL, rtol=0)

    close(scores, reference["scores"])
    close(maps, reference["pixel_maps"])
    close(ours.scores, reference["scores"])
    close(ours.maps, reference["maps"])
    close(ours.zero_shot_scores, reference["zero_shot_scores"])
    close(ours.zero_shot_scale_maps, reference["zero_shot_scale_maps"].flatten(2))
    close(ours.zero_shot_map, reference["zero_shot_map"].view(batch, -1))
    if "visual_maps" in reference:
        assert ours.visual_maps is not None
        close(ours.visual_maps, reference["visual_maps"].flatten(2))
    else:
        assert ours.visual_maps is None


def run_both(
    method: WinClipMethod,
    clip: nn.Module,
    ours_input: torch.Tensor,
    reference_input: torch.Tensor,
    reference_shots: torch.Tensor | None,
) -> tuple[WinClipOutput, Prediction, dict[str, torch.Tensor]]:
    with torch.no_grad():
        output = method.model(method.geometry.normalize(ours_input))
        prediction = method.predict(ours_input)
    text = method.model.text_embeddings.double()
    shots = None if reference_shots is None else reference_shots.double()
    return output, prediction, reference_winclip(clip, text, reference_input.double(), shots)


# --- prototypes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normalized_prototypes(tiny_model_name: str) -> torch.Tensor:
    """Our default ``prompt_average="normalized"``, same weights."""
    return make_method(tiny_model_name, prompt_average="normalized").model.encode_text("bottle")


def test_raw_prototypes_equal_the_transcriptions_raw_mean(zero_shot, normalized_prototypes) -> None:
    model = zero_shot.model
    normal, anomalous = prompt_ensemble("bottle")
    expected = F.normalize(reference_prototypes(model.clip, model.tokenizer, normal, anomalous))
    torch.testing.assert_close(model.text_embeddings, expected, atol=TOL, rtol=0)
    assert (normalized_prototypes - expected).abs().max() > 1e-3


# --- square inputs -------------------------------------------------------------------------


def test_zero_shot_equals_the_transcription(zero_shot, reference_clip) -> None:
    images = random_images(2, seed=1)
    normalised = zero_shot.geometry.normalize(images)
    output, prediction, expected = run_both(zero_shot, reference_clip, images, normalised, None)
    compare(output, prediction.maps, prediction.scores, expected)
    # the scores are not saturated: the comparison sees the arithmetic
    assert float(expected["zero_shot_scale_maps"].min()) > 0.01
    assert float(expected["zero_shot_scale_maps"].max()) < 0.99
    assert float(expected["zero_shot_scale_maps"].std()) > 0.01


def test_one_shot_equals_the_transcription(zero_shot, reference_clip, tiny_model_name) -> None:
    images, shot = random_images(2, seed=1), random_images(1, seed=2)
    method = one_shot(tiny_model_name, shot)
    normalised, shots = (method.geometry.normalize(x) for x in (images, shot))
    output, prediction, expected = run_both(method, reference_clip, images, normalised, shots)
    compare(output, prediction.maps, prediction.scores, expected)
    assert float(expected["visual_maps"].std()) > 1e-3


# --- non-square inputs ---------------------------------------------------------------------


def write_image(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx * yy) % 89 * 2.8], axis=-1)
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def both_preprocessings(method: WinClipMethod, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(our host loader + declared geometry: uint8 [1,3,S,S], open_clip's transform [1,3,S,S])."""
    ours = SampleImages([Sample(image_path=path, label=0, category="bottle")], method.geometry)
    cfg = open_clip.get_model_preprocess_cfg(method.model.clip)
    transform = open_clip.image_transform(
        SIZE,
        is_train=False,
        mean=cfg["mean"],
        std=cfg["std"],
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
    )
    with Image.open(path) as image:
        theirs = transform(image.convert("RGB"))
    return ours[0]["image"][None], theirs[None]


@pytest.mark.parametrize("shots", [0, 1])
def test_non_square_image_through_both_preprocessings(
    zero_shot, reference_clip, tiny_model_name, tmp_path, shots: int
) -> None:
    query = write_image(tmp_path / "query.png", 130, 97, seed=3)
    ours_query, their_query = both_preprocessings(zero_shot, query)
    torch.testing.assert_close(
        zero_shot.geometry.normalize(ours_query), their_query, atol=TOL, rtol=0
    )
    method, ours_shot, their_shot = zero_shot, None, None
    if shots:
        shot = write_image(tmp_path / "shot.png", 97, 130, seed=4)
        ours_shot, their_shot = both_preprocessings(zero_shot, shot)
        method = one_shot(tiny_model_name, ours_shot)
    output, prediction, expected = run_both(
        method, reference_clip, ours_query, their_query, their_shot
    )
    compare(output, prediction.maps, prediction.scores, expected)


# --- the comparison can fail ----------------------------------------------------------------


def test_a_different_setting_is_detected(zero_shot, reference_clip, normalized_prototypes) -> None:
    """Settings the comparison must tell apart, each far above the tolerance."""
    images = random_images(2, seed=1)
    normalised = zero_shot.geometry.normalize(images).double()
    text = zero_shot.model.text_embeddings.double()
    with torch.no_grad():
        ours = zero_shot.model(zero_shot.geometry.normalize(images))
    variants = {
        "temperature 0.01 (caoyunkang's 100 * cos)": reference_winclip(
            reference_clip, text, normalised, temperature=0.01
        ),
        "prototypes of prompt_average=normalized": reference_winclip(
            reference_clip, normalized_prototypes.double(), normalised
        ),
        "windows as large as the grid (no local windows)": reference_winclip(
            reference_clip, text, normalised, scales=(5, 5)
        ),
    }
    for name, variant in variants.items():
        gap = (ours.zero_shot_map.double() - variant["zero_shot_map"].flatten(1)).abs().max()
        assert gap > 100 * TOL, name
