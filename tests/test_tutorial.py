"""The tutorial notebook (case_studies/tutorial.ipynb) runs from top to bottom in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "case_studies" / "tutorial.ipynb"


@pytest.mark.slow
def test_the_tutorial_notebook_runs(induction_2l, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))  # the kernel inherits the session's cache and this store
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "completeness error" in text and "circuit:" in text
