"""Weights: one identity from the loaded tensors, the cache before the network, failures in
seconds, one checkpoint normaliser, QuickGELU for OpenAI-style open_clip files.

No test touches the real network: the Hugging Face cache is written in a temporary folder in
the layout huggingface_hub uses, and ``HF_ENDPOINT`` points at a local port that refuses
connections or at a local socket that accepts and never answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from ad_afclip.clip_models import TINYCLIP_RELEASES, _tinyclip_release
from ad_patchcore.backbone import build_backbone
from ad_patchcore.config import PatchCoreConfig
from ad_patchcore.plugin import factory
from adcore.contracts.method import FitContext, Runtime
from adcore.infra.captured import captured_output
from adcore.infra.errors import WeightsError
from adcore.outputs.reporters.summary import RANDOM_NOTE, UNTRAINED_NOTE, PrettySummaryReporter
from adcore.outputs.results import RunResult
from adcore.toolkit import hub
from adcore.toolkit.checkpoints import normalise_state, read_checkpoint
from adcore.toolkit.openclip import load_open_clip
from adcore.toolkit.weights import (
    check_fitted_state,
    stamp_fitted_state,
    weights_flags,
    with_trained_parts,
)
from weightsfixtures import (
    closed_port,
    hub_endpoint,
    silent_endpoint,
    torch_bytes,
    torchscript_archive,
    write_hf_cache,
)

TINY_VIT = "ad-weights-tiny-vit"
TINY_VIT_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_VIT}.json").write_text(json.dumps(TINY_VIT_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_VIT


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty cache of our own, and an endpoint that refuses every connection."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False).state_dict()


def patchcore_scores(pretrained: str) -> tuple[dict, torch.Tensor, torch.Tensor]:
    config = PatchCoreConfig(backbone="resnet18", pretrained=pretrained, resolution=72, crop=64)
    method = factory(config, Runtime(seed=0))
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 3, 64, 64), generator=generator, dtype=torch.uint8)
    method.fit(FitContext("toy", "toy", 4, [images[:4]]))
    with torch.no_grad():
        prediction = method.predict(images[4:])
    return method.weights_identity(), prediction.scores, prediction.maps


# -- one identity, every checkpoint shape ---------------------------------------------------


def test_same_tensors_in_three_file_formats_give_one_identity_and_the_same_scores(tmp_path):
    state = resnet18_state(seed=11)
    plain, wrapped, safe = tmp_path / "plain.pth", tmp_path / "wrapped.ckpt", tmp_path / "w.st"
    torch.save(state, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    safe = safe.with_suffix(".safetensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(safe))
    results = [patchcore_scores(str(path)) for path in (plain, wrapped, safe)]
    digests = {identity["digest"] for identity, _, _ in results}
    assert len(digests) == 1
    for _, scores, maps in results[1:]:
        assert torch.equal(scores, results[0][1]) and torch.equal(maps, results[0][2])
    # Other tensors, another identity: the digest reads values, not names alone.
    torch.save(resnet18_state(seed=12), tmp_path / "other.pth")
    _, other = build_backbone("resnet18", str(tmp_path / "other.pth"), ["layer2", "layer3"], 0)
    assert other["digest"] not in digests


def test_open_clip_identity_is_the_same_for_plain_prefixed_and_safetensors_files(
    tiny_vit, tmp_path
):
    model, random_identity = load_open_clip(tiny_vit, "none", seed=4)
    state = model.state_dict()
    torch.save(state, tmp_path / "a.pt")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "b.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "c.safetensors"))
    identities = [
        load_open_clip(tiny_vit, str(tmp_path / name))[1]
        for name in ("a.pt", "b.pt", "c.safetensors")
    ]
    assert {i["digest"] for i in identities} == {random_identity["digest"]}
    assert random_identity["random_backbone"] and not identities[0]["random_backbone"]
    assert [i["source"] for i in identities] == ["file"] * 3
    # open_clip's "No pretrained weights loaded ... initialized randomly" is false here.
    assert not any("randomly" in m for i in identities for m in i["messages"])


def test_normaliser_unwraps_and_strips_only_common_prefixes():
    tensor = torch.ones(1)
    assert normalise_state({"state_dict": {"module.a": tensor, "module.b": tensor}}) == {
        "a": tensor,
        "b": tensor,
    }
    assert list(normalise_state({"model": {"_orig_mod.module.x": tensor}})) == ["x"]
    # Only some keys prefixed: a real module called "module", kept.
    assert set(normalise_state({"module.a": tensor, "b": tensor})) == {"module.a", "b"}
    with pytest.raises(WeightsError, match="not a state dict"):
        normalise_state([tensor], "x.pt")


def test_mismatch_names_missing_unexpected_and_shapes(tmp_path):
    state = resnet18_state(seed=1)
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    del state["layer1.0.bn1.running_mean"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as caught:
        build_backbone("resnet18", str(tmp_path / "bad.pth"), ["layer2"], 0)
    message = str(caught.value)
    assert "1 missing (first: layer1.0.bn1.running_mean)" in message
    assert "conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7)" in message
    assert "Error(s) in loading" not in message
    torch.save(resnet18_state(seed=1), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"missing \(first: layer1\.2\."):
        build_backbone("resnet34", str(tmp_path / "r18.pth"), ["layer2"], 0)


def test_refused_files_say_what_they_hold_and_how_to_resave(tmp_path, tiny_vit):
    path = tmp_path / "run.pt"
    torch.save({"state_dict": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(WeightsError) as caught:
        read_checkpoint(path)
    message = str(caught.value)
    assert "Python objects beyond tensors (e.g. argparse.Namespace)" in message
    assert "torch.save(model.state_dict()" in message and "\n" not in message
    assert "weights_only=False` will likely succeed" not in message
    archive = torchscript_archive(resnet18_state(0), tmp_path / "r18_script.pt")
    with pytest.raises(WeightsError, match="TorchScript archive"):
        build_backbone("resnet18", str(archive), ["layer2"], 0)


# -- the cache first, then the network briefly -----------------------------------------------


def test_timm_tag_loads_from_a_simulated_cache_without_network(no_network):
    state = resnet18_state(seed=5)
    save_file(state, str(no_network.parent / "model.safetensors"))
    data = (no_network.parent / "model.safetensors").read_bytes()
    write_hf_cache(no_network, "timm/resnet18.a1_in1k", {"model.safetensors": data})
    started = time.monotonic()
    model, identity = build_backbone("resnet18", "a1_in1k", ["layer2", "layer3"], 0)
    assert time.monotonic() - started < 20
    assert torch.equal(model.state_dict()["layer2.0.conv1.weight"], state["layer2.0.conv1.weight"])
    assert identity["source"] == "tag" and identity["file"].startswith(str(no_network))
    torch.save(state, no_network.parent / "same.pth")
    _, from_file = build_backbone(
        "resnet18", str(no_network.parent / "same.pth"), ["layer2", "layer3"], 0
    )
    assert from_file["digest"] == identity["digest"]


def test_a_tag_missing_from_the_cache_is_downloaded_once_then_read_from_the_cache(
    no_network, monkeypatch
):
    state = resnet18_state(seed=6)
    save_file(state, str(no_network.parent / "w.safetensors"))
    data = (no_network.parent / "w.safetensors").read_bytes()
    with hub_endpoint({"timm/resnet18.a1_in1k/model.safetensors": data}) as (url, log):
        monkeypatch.setenv("HF_ENDPOINT", url)
        _, fetched = build_backbone("resnet18", "a1_in1k", ["layer2"], 0)
        assert any(line.startswith("GET /timm/resnet18.a1_in1k/") for line in log)
    # The endpoint is gone: the second run reads the cache and never asks.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    model, cached = build_backbone("resnet18", "a1_in1k", ["layer2"], 0)
    assert cached["digest"] == fetched["digest"] and cached["file"].startswith(str(no_network))
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    with hub_endpoint({}) as (url, log):  # a repository without the file: named, no retry
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(WeightsError, match="has none of them"):
            build_backbone("resnet18", "a2_in1k", ["layer2"], 0)
        assert len(log) == 2  # one HEAD per candidate file name


def test_no_cache_and_a_refusing_endpoint_fail_in_seconds_with_one_paragraph(no_network):
    started = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        build_backbone("resnet18", "a1_in1k", ["layer2"], 0)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "timm/resnet18.a1_in1k" in message and str(no_network) in message
    assert "2 attempts" in message and "model.pretrained" in message and "\n" not in message


def test_an_endpoint_that_never_answers_times_out_after_one_retry(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with silent_endpoint() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        started = time.monotonic()
        with pytest.raises(WeightsError, match="2 attempts"):
            hub.hub_file("org/repo", ["a.bin", "b.bin"], what="The weights x", how="Fetch x.")
        elapsed = time.monotonic() - started
    assert hub.ATTEMPTS * hub.TIMEOUT_S <= elapsed < hub.ATTEMPTS * hub.TIMEOUT_S + 8


def test_offline_mode_never_touches_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with silent_endpoint() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        started = time.monotonic()
        with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
            hub.hub_file("org/repo", ["a.bin"], what="The weights x", how="Fetch x.")
        assert time.monotonic() - started < 1


def test_tinyclip_cache_file_is_checked_against_its_sha256(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (backbone, tag), (url, sha256) = next(iter(TINYCLIP_RELEASES.items()))
    target = tmp_path / "tinyclip" / url.rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    target.write_bytes(b"a truncated download")
    with pytest.raises(WeightsError, match=f"SHA-256 .* but the released file has {sha256}"):
        _tinyclip_release(backbone, tag)
    # A file whose checksum matches is used (the release table says what matches).
    content = b"the released bytes"
    monkeypatch.setitem(
        TINYCLIP_RELEASES, (backbone, tag), (url, hashlib.sha256(content).hexdigest())
    )
    target.write_bytes(content)
    assert _tinyclip_release(backbone, tag) == target


# -- QuickGELU and OpenAI's files -----------------------------------------------------------


def test_openai_style_local_file_equals_the_openai_tag(tiny_vit, no_network, monkeypatch):
    """A simulated ``openai`` tag (open_clip's cfg for OpenAI weights: hub file, QuickGELU)
    and the same tensors as OpenAI ship them (TorchScript with integer extras) must build the
    same network: the same outputs to the last bit."""
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED,
        tiny_vit,
        {"openai": {"hf_hub": f"timm/{tiny_vit}.openai/", "quick_gelu": True}},
    )
    source, _ = load_open_clip(tiny_vit, "none", seed=9)
    state = source.state_dict()
    write_hf_cache(
        no_network, f"timm/{tiny_vit}.openai", {"open_clip_pytorch_model.bin": torch_bytes(state)}
    )
    tagged, tag_identity = load_open_clip(tiny_vit, "openai")
    archive = torchscript_archive(
        state, no_network.parent / "tiny-vit.pt", input_resolution=32, context_length=77,
        vocab_size=49408,
    )  # fmt: skip
    local, file_identity = load_open_clip(tiny_vit, str(archive))
    assert tag_identity["quick_gelu"] and file_identity["quick_gelu"]
    assert tag_identity["digest"] == file_identity["digest"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer(tiny_vit)(["a photo of a thing", "a flawed thing"])
    with torch.no_grad():
        for a, b in ((tagged, local),):
            assert torch.equal(a.encode_image(images), b.encode_image(images))
            assert torch.equal(a.encode_text(tokens), b.encode_text(tokens))
    # The same tensors as a plain state dict carry no OpenAI marker: GELU unless told.
    plain = no_network.parent / "plain.pt"
    torch.save(state, plain)
    gelu, gelu_identity = load_open_clip(tiny_vit, str(plain))
    forced, forced_identity = load_open_clip(tiny_vit, str(plain), quick_gelu=True)
    assert not gelu_identity["quick_gelu"] and forced_identity["quick_gelu"]
    with torch.no_grad():
        assert not torch.equal(gelu.encode_image(images), tagged.encode_image(images))
        assert torch.equal(forced.encode_image(images), tagged.encode_image(images))
    _, off = load_open_clip(tiny_vit, str(archive), quick_gelu=False)
    assert not off["quick_gelu"]


# -- what ran, said honestly -----------------------------------------------------------------


def test_random_backbone_and_untrained_parameters_are_reported_apart(tmp_path):
    backbone = {"digest": "ab", "random_backbone": False, "architecture": "x", "pretrained": "t"}
    untrained = with_trained_parts(backbone, None, None)
    trained = with_trained_parts(backbone, {"w": torch.ones(2)}, tmp_path / "c.safetensors")
    assert weights_flags(untrained) == {
        "weights": untrained,
        "random_weights": False,
        "random_backbone": False,
        "untrained_parameters": True,
    }
    assert not weights_flags(trained)["untrained_parameters"]
    assert trained["checkpoint_digest"] and trained["checkpoint"].endswith("c.safetensors")
    assert weights_flags({"random": True})["random_backbone"]  # older third-party identity
    for random_weights, untrained_parameters in ((False, True), (True, False)):
        result = RunResult(
            run_dir=tmp_path, dataset="d", method="m", experiment="e", metric_names=[],
            categories=[], random_weights=random_weights,
            untrained_parameters=untrained_parameters,
        )  # fmt: skip
        identity = {**trained, "source": "tag"}
        context = SimpleNamespace(run_dir=tmp_path, env={"weights": identity})
        PrettySummaryReporter().on_run(result, context)
        text = (tmp_path / "summary_metrics_pretty.md").read_text()
        assert "Weights: x, tag t, digest ab, trained checkpoint digest " in text
        assert (RANDOM_NOTE in text) is random_weights
        assert (UNTRAINED_NOTE in text) is untrained_parameters
    random_identity = {**trained, "source": "random", "pretrained": "none"}
    context = SimpleNamespace(run_dir=tmp_path, env={"weights": random_identity})
    PrettySummaryReporter().on_run(result, context)
    text = (tmp_path / "summary_metrics_pretty.md").read_text()
    assert "Weights: x, random initialisation, digest ab" in text


def test_fitted_state_of_other_weights_is_refused(tmp_path):
    identity = {"digest": "aaaa", "architecture": "resnet18", "pretrained": "x"}
    state = stamp_fitted_state({"bank": torch.zeros(1)}, identity)
    check_fitted_state(state, identity, tmp_path / "model.pt")
    with pytest.raises(WeightsError, match=r"digest aaaa\), but this run uses"):
        check_fitted_state(state, {**identity, "digest": "bbbb"}, tmp_path / "model.pt")


def test_third_party_chatter_is_captured_and_summarised():
    messages: list[str] = []
    import logging
    import warnings

    with captured_output(messages):
        for _ in range(3):
            warnings.warn("a deprecation", FutureWarning, stacklevel=1)
        logging.getLogger("open_clip").warning("No pretrained weights loaded for model x.")
        print("a print from a library")
    assert messages == ["FutureWarning: a deprecation (x3)", "a print from a library"]


def test_comparison_report_marks_untrained_parameters_apart_from_random(tmp_path):
    from adcore.outputs.report.compare import label_runs, read_run, report_markdown

    runs = []
    for name, env in (("a", {"untrained_parameters": True}), ("b", {"random_weights": True})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary_metrics.csv").write_text("category,image_auroc\nmean,0.5\n")
        (folder / "config.yaml").write_text(f"model: {{name: {name}}}\n")
        (folder / "env.json").write_text(json.dumps(env))
        (folder / "summary.json").write_text(json.dumps({"metric_names": ["image_auroc"]}))
        runs.append(read_run(folder))
    label_runs(runs)
    assert [(r.random_weights, r.untrained_parameters) for r in runs] == [
        (False, True),
        (True, False),
    ]
    text = report_markdown(runs, [], [], [])
    rows = [line for line in text.splitlines() if line.startswith("| a ") or "| b |" in line]
    assert "as configured, *untrained parameters*" in rows[0] and "**random**" in rows[1]
    assert "untrained parameters" not in rows[1]
