"""What ``ad eval`` writes for one finished category: scores, metrics, and maps or the model."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from adcore.contracts.dataset import Sample
    from adcore.contracts.method import Method
    from adcore.outputs.results import CategoryResult, RunLayout
    from adcore.run.preparation import CategoryData


def write_category_files(
    layout: RunLayout,
    result: CategoryResult,
    method: Method,
    test: list[Sample],
    scores: np.ndarray,
    maps: np.ndarray,
    metric_names: list[str],
    save_maps: bool = False,
    save_model: bool = False,
    prepared: CategoryData | None = None,
) -> None:
    """``scores.csv``, ``inventory.csv``, the fitted state (with the category's decoding) when
    asked, ``metrics.csv``, then maps when asked: the numbers are on disk before any map or
    picture (the reporters' overlays come after), so a failure there never loses them.

    ``scores`` [N] and ``maps`` [N,H,W] follow ``test``'s order. Raises ``OutputError`` when
    two test images would share one map file.
    """
    from ad_runtime.mapfiles import write_map
    from adcore.data.inventory import write_inventory
    from adcore.outputs.fitted import save_decoding, save_fitted_state
    from adcore.outputs.outputkeys import check_distinct, output_keys
    from adcore.outputs.results import write_category, write_scores

    category = result.category
    write_scores(layout, category, test, scores)
    if prepared is not None:
        write_inventory(layout.inventory(category), prepared.inventory)
    if save_model:
        save_fitted_state(method, layout.model_state(category))
        if prepared is not None:
            save_decoding(prepared.decoding, layout.model_state(category))
    write_category(layout, result, metric_names)  # metrics.csv last but maps: "finished"
    if save_maps:
        paths = [layout.map_path(category, key) for key in output_keys(test)]
        check_distinct(paths)
        for value, path in zip(maps, paths, strict=True):
            write_map(path, value)
