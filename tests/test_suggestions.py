"""A misspelt name gets the close match ("did you mean"), wherever names are looked up; an
unknown --method/--dataset is a usage error (exit 2)."""

from __future__ import annotations

import difflib
import re

import pytest

from adcore.config.files import build_raw_config, nested
from adcore.config.resolve import resolve_raw
from adcore.infra.errors import AdError, DataError
from adcore.infra.suggest import CUTOFF, close_match
from adcore.plugins.registry import get_registry
from adtest import run_ad


def problems_of(assignments: list[str], **sugar: str) -> AdError:
    locations: dict[str, str] = {}
    raw = build_raw_config(None, sugar, assignments, locations)
    with pytest.raises(AdError) as caught:
        resolve_raw(raw, get_registry(), locations=locations)
    return caught.value


def test_close_match_is_difflibs_best_above_the_cutoff():
    names = ["patchcore", "pixel-gaussian", "winclip"]
    for typo in ("patchcor", "winclp", "pixel-gausian", "zzz"):
        ranked = sorted(names, key=lambda n: -difflib.SequenceMatcher(None, typo, n).ratio())
        best = ranked[0]
        expected = best if difflib.SequenceMatcher(None, typo, best).ratio() >= CUTOFF else None
        assert close_match(typo, names) == expected
    assert close_match("zzz", names) is None


def test_set_keys_metrics_and_sections_suggest_the_close_name():
    error = problems_of(["data.batch_sise=4", "evaluation.latency.budget=3"])
    assert "data.batch_sise: unknown key; did you mean 'batch_size'?" in str(error)
    assert "evaluation.latency.budget: unknown key; did you mean 'budget_fraction'?" in str(error)
    error = problems_of(["evaluation.metrics=[image_aurok, pro]"])
    assert "image_aurok (did you mean 'image_auroc'?)" in str(error)
    with pytest.raises(AdError, match="Did you mean 'evaluation'"):
        nested("evaluaton.metrics", None)


def test_plugin_and_category_names_suggest_the_close_name(tmp_path):
    with pytest.raises(
        AdError, match=re.escape("Unknown method 'patchcor'. Did you mean 'patchcore'?")
    ):
        get_registry().resolve("method", "patchcor")
    from adcore.run.components import select_categories

    class Three:
        def categories(self) -> list[str]:
            return ["fabric", "pill", "washer"]

    with pytest.raises(DataError, match="fabrik: did you mean 'fabric'"):
        select_categories(Three(), ["fabrik"])


def test_unknown_method_or_dataset_option_is_a_usage_error():
    for args in (("--method", "patchcor"), ("--dataset", "mvtek", "--method", "patchcore")):
        result = run_ad("eval", *args, "--random-weights")
        assert result.returncode == 2, result.stderr
        assert "Did you mean" in result.stderr and "Traceback" not in result.stderr
    result = run_ad("data", "download", "btadd", "--to", "unused")
    assert result.returncode == 2 and "Did you mean 'btad'?" in result.stderr
    as_set = run_ad("eval", "--set", "model.name=patchcor")  # a config value: exit 1
    assert as_set.returncode == 1 and "Did you mean 'patchcore'?" in as_set.stderr
