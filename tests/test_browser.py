"""Every dashboard page in a real browser: the Streamlit server started for real, each page opened in Debian's
headless Chromium on stored fixture runs, a screenshot saved, and the test failing on an error box, an exception or
a blank page.

The fixture runs are the ones the pages' AppTest tests write (imported below), all into one store. Screenshots go to
``$WORKBENCH_SCREENSHOTS`` when set (else the test's temporary folder). Without Chromium the test is skipped, except
under ``WORKBENCH_REQUIRE_BROWSER=1`` (set by ``.ci/run``, which installs it), where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_app_circuits import circuit_store  # noqa: F401  (fixtures: each writes its runs into tmp_path/runs)
from test_app_dictionaries import dictionary_store  # noqa: F401
from test_app_graph_explorer import attribution_run  # noqa: F401
from test_app_paths import paths_store  # noqa: F401
from test_app_probes import probe_store  # noqa: F401
from test_app_training import _dynamics, _zoo_training, store  # noqa: F401
from test_app_vision import vision_store  # noqa: F401

from workbench.store import Run, Store
from workbench.ui.browser import browser_missing, chromium, page_names, serve, visit


def _readable(run: Run) -> bool:
    try:
        for name in run.names("tensors"):
            run.tensors(name)
        for name in run.names("table"):
            run.table(name)
        for name in run.names("json"):
            run.json(name)
    except Exception:
        return False
    return True


@pytest.fixture
def every_page_store(tmp_path, circuit_store, dictionary_store, paths_store, probe_store, store,  # noqa: F811
                     attribution_run, vision_store):  # noqa: F811
    """One store holding the fixture runs of every page, without the deliberately corrupt ones (the AppTest tests
    check their error boxes; here an error box is a failure)."""
    shutil.copytree(attribution_run[1].path, tmp_path / "runs" / "attribution" / attribution_run[1].run_id)
    _zoo_training(store, "llama-d64-l2", 1.0)
    _zoo_training(store, "gpt-relu-d64-l2", 0.9)
    _dynamics(store, with_predictor=True)
    runs = Store(tmp_path / "runs")
    for info in runs.list():
        if not info.ok or not _readable(runs.load(info.kind, info.run_id)):
            shutil.rmtree(info.path)
    kinds = {i.kind for i in runs.list()}
    assert {"sparsity", "massive", "probe", "dictionary", "cdt", "patching", "paths", "zoo-training", "dynamics",
            "attribution", "vit"} <= kinds
    return runs.root


def test_every_page_renders_in_chromium(every_page_store, tmp_path):
    reason = browser_missing()
    if reason:
        if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test must run here: {reason}")
        pytest.skip(reason)
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    names = page_names()
    assert len(names) >= 7, names  # Home and one page per analysis family
    env = {"WORKBENCH_RUNS": str(every_page_store), "WORKBENCH_HOME": os.environ["WORKBENCH_HOME"]}
    problems = []
    with serve(env=env) as url:
        driver = chromium()
        try:
            for name in names:
                page = visit(driver, url, name)
                (shots / f"{page.name}.png").write_bytes(page.screenshot)
                if page.exceptions:
                    problems.append(f"{page.name}: exception {page.exceptions}")
                if page.errors:
                    problems.append(f"{page.name}: error box {page.errors}")
                if page.blank or page.first_paint_s == float("inf"):
                    problems.append(f"{page.name}: blank page (no heading or text)")
                elif len(page.text) < 80:
                    problems.append(f"{page.name}: almost nothing shown: {page.text!r}")
        finally:
            driver.quit()
    assert not problems, "\n".join(problems)
