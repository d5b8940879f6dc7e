"""The Formation and Pathways pages, driven headless on tiny runs the analyses themselves computed."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from circuits.formation.analysis import FORMATION, FormationConfig
from circuits.pathways.analysis import SSA, SsaConfig
from workbench.store import Store

PAGES = Path(__file__).resolve().parents[1] / "app" / "pages"
TIMEOUT = 60
TOY = dict(d_model=16, half_len=4, vocab=16, batch=4, n_eval=8)


@pytest.fixture(scope="module")
def formation_store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("formation-runs"))
    FORMATION.launch(None, FormationConfig(clamps=["none", "L1.H*.output=zero"], steps=10, evaluations=3, **TOY),
                     store=store)
    SSA.launch(None, SsaConfig(steps=6, evaluations=2, ensemble=2, **TOY), store=store)
    return store


@pytest.mark.parametrize(("page", "tables"), [("10_Formation.py", 2), ("11_Pathways.py", 2)])
def test_pages_show_the_runs(formation_store, page, tables, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(formation_store.root))
    at = AppTest.from_file(str(PAGES / page), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe) >= tables
    if page == "10_Formation.py":
        assert at.selectbox[1].options == ["none", "L1.H0.output=zero", "L1.H1.output=zero"]
        at.selectbox[1].select("L1.H1.output=zero").run()
        assert not at.exception
    else:
        at.radio[0].set_value("loss_repeated_half").run()
        assert not at.exception


@pytest.mark.parametrize("page", ["10_Formation.py", "11_Pathways.py"])
def test_pages_without_runs(page, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(str(PAGES / page), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No " in i.value for i in at.info) or any("No " in m.value for m in at.markdown)
