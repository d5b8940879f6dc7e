"""The dashboard's demo run of the path-ensemble analysis: SmolLM2-135M on one short sentence."""

from __future__ import annotations

from typing import Any

DEMO_MODEL = "smollm2-135m"
DEMO_PROMPT = "When Mary and John went to the store, John gave a drink to"


def demo(store: Any, device: str | None = None, progress: bool = True) -> Any:
    """Analyse :data:`DEMO_PROMPT` on SmolLM2 (all 61 path lengths, top paths, single lesions, random lesions with
    one draw for every second k) and store it as a ``paths`` run; returns its RunInfo. About a minute on two CPU cores."""
    from circuits.paths.analysis import analyse_paths, save_paths_run
    from workbench.models import load_model

    model = load_model(DEMO_MODEL, device=device)
    result = analyse_paths(model, DEMO_PROMPT, lesion_draws=1, lesion_step=2, progress=progress)
    return save_paths_run(store, result, DEMO_MODEL)
