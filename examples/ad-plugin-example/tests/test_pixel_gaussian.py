"""The example plugin's own tests: the host's public contract checks, and its arithmetic."""

from __future__ import annotations

import torch

from ad_plugin_example import adcore_methods
from adcore.api import FitContext, Runtime
from adcore.testing import check_method, check_records


def test_records_pass_the_host_contract():
    check_records(adcore_methods())


def test_method_contract_at_another_resolution():
    (spec,) = adcore_methods()
    method = check_method(spec, config={"resolution": 48}, efficiency=False)
    assert method.geometry.output_size == 48


def test_an_image_equal_to_the_mean_scores_below_an_outlier():
    """A hand calculation: the support's per-pixel mean is the least anomalous image."""
    (spec,) = adcore_methods()
    config = spec.config(resolution=16, blur=1)
    method = spec.factory(config, Runtime(device="cpu"))
    generator = torch.Generator().manual_seed(0)
    support = torch.randint(100, 140, (4, 3, 16, 16), generator=generator, dtype=torch.uint8)
    with torch.no_grad():
        method.fit(FitContext("thing", "thing", 4, iter([support])))
        mean = support.float().mean(0, keepdim=True).round().to(torch.uint8)  # [1,3,16,16]
        outlier = mean.clone()
        outlier[..., 4:8, 4:8] = 255
        prediction = method.predict(torch.cat([mean, outlier]))
    assert prediction.scores[0] < prediction.scores[1]
    assert prediction.maps[1, 4:8, 4:8].min() > prediction.maps[1, 10:, 10:].max()
