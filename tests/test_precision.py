"""Reduced precision: bf16 autocast runs the backbones, everything after them stays fp32.

Tiny random models (a resnet18 for PatchCore, small open_clip ViTs for WinCLIP and
AF-CLIP). Whether bf16 ran is seen inside the backbones (the dtype a linear or convolution
layer returns); that scores, maps and nearest-neighbour search stay fp32 is seen where they
are computed (autocast switched off there) and in the outputs. The bf16 maps are compared
with the fp32 maps of the same model and images: bf16 keeps 8 bits of mantissa (relative
rounding 2^-9 = 2e-3 per operation); on these models the maps' relative L2 difference
measured 3.6e-4 (PatchCore), 3.4e-4 (WinCLIP+) and 6.2e-4 (AF-CLIP few-shot), the scores'
4.6e-4, 2.5e-4 and 1.2e-3 (torch 2.14.1 on an AMX CPU); the bounds are about 3x those.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import adcore.infra.precision
from ad_afclip.clip_models import register_model_config
from ad_afclip.config import AFCLIPConfig
from ad_afclip.method import AFCLIPMethod
from ad_patchcore.config import PatchCoreConfig
from ad_patchcore.plugin import factory as patchcore_factory
from ad_winclip.config import WinClipConfig
from ad_winclip.plugin import factory as winclip_factory
from adcore.contracts.method import FitContext, Method, Runtime
from adcore.infra.errors import ConfigError
from adcore.infra.precision import check_precision, cpu_bf16_flags, cpu_vector_extensions
from adtest import eval_args, fast_flags, run_ad

TINY_CLIP = "ad-test-precision-vit"
VISION = {"image_size": 80, "layers": 3, "width": 64, "head_width": 16, "patch_size": 16}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
register_model_config(TINY_CLIP, {"embed_dim": 32, "vision_cfg": VISION, "text_cfg": TEXT})


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run these tests on any CPU: without native bf16, PyTorch emulates it (slowly)."""
    monkeypatch.setattr(adcore.infra.precision, "cpu_bf16_flags", lambda: ("amx_bf16",))


def images(count: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


def build(name: str, precision: str) -> Method:
    runtime = Runtime(device="cpu", precision=precision, seed=0)
    if name == "patchcore":
        config = PatchCoreConfig(backbone="resnet18", pretrained="none", resolution=64, crop=64)
        return patchcore_factory(config, runtime)
    if name == "winclip":
        config = WinClipConfig(backbone=TINY_CLIP, pretrained="none", resolution=80)
        return winclip_factory(config, runtime)
    torch.manual_seed(0)  # AF-CLIP's random backbone comes from the global RNG
    config = AFCLIPConfig(backbone=TINY_CLIP, pretrained="none", resolution=64, layers=[2, 3])
    return AFCLIPMethod(config, runtime)


SIZES = {"patchcore": 64, "winclip": 80, "afclip": 64}


def fitted_prediction(name: str, precision: str, few_shot: bool = True):
    method = build(name, precision)
    size = SIZES[name]
    support = [images(2, size, seed=1)] if few_shot else []
    runtime = method.runtime
    with torch.no_grad(), runtime.autocast():
        method.fit(FitContext("toy", "toy", len(support) * 2, support))
        return method, method.predict(images(3, size, seed=2))


def backbone_layers(method: Method) -> list[nn.Module]:
    """A linear or convolution layer inside each backbone the method runs."""
    if hasattr(method.model, "tower"):  # AF-CLIP
        return [method.model.tower.visual.transformer.resblocks[0].mlp.c_fc]
    if hasattr(method.model, "clip"):  # WinCLIP: every window pass ends in the last block
        return [method.model.clip.visual.transformer.resblocks[-1].mlp.c_fc]
    return [method.model.backbone.conv1]  # PatchCore's resnet


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(other - reference) / torch.linalg.vector_norm(reference))


# --- which devices may run what -----------------------------------------------------------


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    old = tmp_path / "old"
    old.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_bf16_flags(str(amx)) == ("amx_bf16",)
    assert cpu_bf16_flags(str(arm)) == ("bf16",)
    assert cpu_bf16_flags(str(old)) == ()
    assert cpu_bf16_flags(str(tmp_path / "absent")) == ()
    assert cpu_vector_extensions(str(amx)) == ("AVX-512", "AMX")
    assert cpu_vector_extensions(str(arm)) == ("NEON", "BF16")
    assert cpu_vector_extensions(str(old)) == ("AVX2", "AVX-512")
    assert cpu_vector_extensions(str(tmp_path / "absent")) == ()


def test_cpu_without_native_bf16_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(adcore.infra.precision, "cpu_bf16_flags", lambda: ())
    with pytest.raises(ConfigError) as caught:
        Runtime(device="cpu", precision="bf16")
    message = str(caught.value)
    assert "amx_bf16" in message and "avx512_bf16" in message
    assert "model.precision to fp32" in message
    Runtime(device="cpu", precision="fp32")  # the default always runs


@pytest.mark.parametrize(
    ("device", "precision", "fix"),
    [("cpu", "fp16", "bf16"), ("mps", "bf16", "fp32"), ("xla:0", "fp16", "fp32")],
)
def test_unsupported_combinations_name_the_fix(device, precision, fix):
    with pytest.raises(ConfigError, match=f"model.precision to {fix}"):
        check_precision(device, precision)


def test_cli_refuses_fp16_on_cpu_in_one_paragraph(mvtec_root, tmp_path):
    result = run_ad(
        *eval_args(mvtec_root, tmp_path / "out"), "--device", "cpu",
        "--set", "model.precision=fp16", *fast_flags(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "fp16 is for CUDA" in result.stderr and "Traceback" not in result.stderr
    assert "Precision: fp16" not in result.stdout  # not announced, then refused


@pytest.mark.skipif(not cpu_bf16_flags(), reason="this CPU has no native bf16 matmuls")
def test_cli_says_a_bf16_run_on_the_console_and_in_the_summary(mvtec_root, tmp_path):
    result = run_ad(
        *eval_args(mvtec_root, tmp_path / "out"), "--device", "cpu",
        "--set", "model.precision=bf16", *fast_flags(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = "Precision: bf16 backbones (autocast); scores, maps, nearest-neighbour search"
    assert line in " ".join(result.stdout.split())
    (summary,) = (tmp_path / "out").rglob("summary_metrics_pretty.md")
    assert line in summary.read_text()


# --- what runs in bf16, and what does not --------------------------------------------------


def test_host_context_switches_a_callers_autocast_off():
    runtime = Runtime(device="cpu", precision="bf16")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with runtime.autocast():
            assert (a @ b).dtype == torch.float32
            with runtime.backbone_autocast():
                assert (a @ b).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["patchcore", "winclip", "afclip"])
def test_bf16_runs_the_backbone_in_bf16_and_returns_fp32(name):
    method = build(name, "bf16")
    seen: list[torch.dtype] = []
    for layer in backbone_layers(method):
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    size = SIZES[name]
    with torch.no_grad(), method.runtime.autocast():
        method.fit(FitContext("toy", "toy", 2, [images(2, size, seed=1)]))
        seen.clear()
        prediction = method.predict(images(2, size, seed=2))
        floor = method.backbone_forward(method.geometry.normalize(images(1, size, seed=3)))
    assert seen and set(seen) == {torch.bfloat16}
    assert prediction.scores.dtype == torch.float32 and prediction.maps.dtype == torch.float32
    outputs = floor if isinstance(floor, list) else [floor]
    assert all(output.dtype == torch.float32 for output in outputs)


def test_fp32_runs_no_layer_in_bf16():
    method = build("winclip", "fp32")
    seen: list[torch.dtype] = []
    for layer in backbone_layers(method):
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    with torch.no_grad():
        method.fit(FitContext("toy", "toy", 0, []))
        method.predict(images(1, 80, seed=2))
    assert set(seen) == {torch.float32}


def test_patchcore_searches_its_bank_in_fp32(monkeypatch):
    import ad_patchcore.model

    search = ad_patchcore.model.nearest_neighbours
    calls: list[tuple[torch.dtype, bool]] = []

    def spy(queries, *args, **kwargs):
        calls.append((queries.dtype, torch.is_autocast_enabled("cpu")))
        return search(queries, *args, **kwargs)

    monkeypatch.setattr(ad_patchcore.model, "nearest_neighbours", spy)
    method, _ = fitted_prediction("patchcore", "bf16")
    assert method.bank.dtype == torch.float32
    assert calls and set(calls) == {(torch.float32, False)}


def test_winclip_scores_windows_in_fp32(monkeypatch):
    import ad_winclip.model

    scores = ad_winclip.model.class_scores
    calls: list[tuple[torch.dtype, bool]] = []

    def spy(embeddings, text, temperature):
        calls.append((embeddings.dtype, torch.is_autocast_enabled("cpu")))
        return scores(embeddings, text, temperature)

    monkeypatch.setattr(ad_winclip.model, "class_scores", spy)
    method, _ = fitted_prediction("winclip", "bf16")
    assert calls and set(calls) == {(torch.float32, False)}
    model = method.model
    banks = [model.text_embeddings, model.patch_bank, *model.window_banks.values()]
    assert all(bank.dtype == torch.float32 for bank in banks)


# --- how far bf16 moves the results ------------------------------------------------------

# relative L2 difference, bf16 against fp32, of (maps, scores): see the module docstring
TOLERANCE = {"patchcore": (1e-3, 1.5e-3), "winclip": (1e-3, 1e-3), "afclip": (2e-3, 4e-3)}


@pytest.mark.parametrize("name", ["patchcore", "winclip", "afclip"])
def test_bf16_maps_stay_close_to_fp32(name):
    _, fp32 = fitted_prediction(name, "fp32")
    _, bf16 = fitted_prediction(name, "bf16")
    maps, scores = TOLERANCE[name]
    assert 0 < relative_difference(fp32.maps, bf16.maps) < maps  # bf16 ran, moved maps little
    assert relative_difference(fp32.scores, bf16.scores) < scores


def _aten_ops(run) -> set[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as trace:
        run()
    return {event.key for event in trace.key_averages()}


def test_cpu_bf16_self_attention_projects_without_a_per_token_bmm():
    """A batch-first ``nn.MultiheadAttention`` under CPU bf16 autocast: unhooked, its input
    projection becomes a ``bmm`` over the tokens (PyTorch materialises the weight once per
    token: 35x slower on a ViT-B-16 block); hooked, one matrix product with the same values.
    fp32 runs are left exactly as they were."""
    from adcore.infra.precision import sequence_major_self_attention

    torch.manual_seed(0)
    plain = nn.MultiheadAttention(32, 4, batch_first=True).eval().requires_grad_(False)
    hooked = nn.MultiheadAttention(32, 4, batch_first=True).eval().requires_grad_(False)
    hooked.load_state_dict(plain.state_dict())
    sequence_major_self_attention(hooked)
    tokens = torch.randn(3, 10, 32)

    def attend(module, inputs=tokens):
        return module(inputs, inputs, inputs, need_weights=False)[0]

    with torch.no_grad():
        exact = attend(plain)
        assert torch.equal(attend(hooked), exact)  # fp32: untouched
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # bf16 tokens, as a ViT's bf16 patch embedding leaves them, rule out the fused
            # fast path (its weights are fp32), so the projection goes through F.linear;
            # with frozen weights (as every backbone here) matmul then takes the bmm
            low = tokens.bfloat16()
            assert "aten::bmm" in _aten_ops(lambda: attend(plain, low))
            assert "aten::bmm" not in _aten_ops(lambda: attend(hooked, low))
            ours, theirs = attend(hooked, low).float(), attend(plain, low).float()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-2)  # bf16 rounding only
    torch.testing.assert_close(ours, exact, rtol=0, atol=5e-2)


def test_open_clip_models_get_the_sequence_major_hook():
    from adcore.toolkit.openclip import load_open_clip

    model, _ = load_open_clip("ViT-B-32", None, seed=0)
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attention and all(m._forward_pre_hooks for m in attention)
