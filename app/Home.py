"""Home page of the workbench dashboard: the stored runs and the available models.

Run with ``streamlit run app/Home.py`` (or ``workbench app``). The page only reads the run store
(:class:`workbench.store.Store`, at ``$WORKBENCH_RUNS``) and asks the model registry for its cards.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pandas as pd
import streamlit as st
from page_helpers import fetch_list, pick_run, readable, run_verb_with_progress, stored_runs

from workbench.store import RunInfo, Store

TITLE = "Interpretability Workbench"


def run_rows(infos: list[RunInfo]) -> pd.DataFrame:
    """One table row per run: kind, run id, model, created, seconds, status, summary (compact JSON)."""
    rows = [
        {
            "kind": i.kind,
            "run id": i.run_id,
            "model": i.model or "",
            "created": i.created or "",
            "seconds": round(i.seconds, 2) if i.seconds is not None else None,
            "status": i.status,
            "summary": json.dumps(i.summary, default=str)[:300]
            if i.summary
            else ("" if i.ok else i.error or ""),
        }
        for i in infos
    ]
    columns = ["kind", "run id", "model", "created", "seconds", "status", "summary"]
    return pd.DataFrame(rows, columns=columns)


def model_rows(cards: list[Any]) -> pd.DataFrame:
    """Model cards (dicts, dataclasses or plain objects) as a table."""
    columns = ["name", "source", "parameters", "architecture", "license", "cached"]
    rows = []
    for card in cards:
        if isinstance(card, dict):
            d = dict(card)
        elif dataclasses.is_dataclass(card) and not isinstance(card, type):
            d = dataclasses.asdict(card)
        else:
            d = {c: getattr(card, c, None) for c in columns}
        rows.append({c: d.get(c) for c in columns} | {k: v for k, v in d.items() if k not in columns})
    df = pd.DataFrame(rows)
    # mixed-type object columns do not serialise to Arrow; show them as text
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(
                lambda v: "" if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
            )
    return df


def _runs_section() -> None:
    store = Store()
    st.header("Runs")
    st.caption(f"Run store: `{store.root}`")
    infos = stored_runs(store, empty="No runs stored yet. Run an analysis (e.g. `workbench demo`) to fill the store.")
    if not infos:
        return

    kinds = sorted({i.kind for i in infos})
    models = sorted({i.model for i in infos if i.model})
    with st.sidebar:
        st.subheader("Filter runs")
        chosen_kinds = st.multiselect("Kind", kinds, default=[], key="kinds", placeholder="all kinds")
        chosen_models = st.multiselect("Model", models, default=[], key="models", placeholder="all models")
    shown = [
        i
        for i in infos
        if (not chosen_kinds or i.kind in chosen_kinds) and (not chosen_models or i.model in chosen_models)
    ]
    n_corrupt = sum(1 for i in shown if not i.ok)
    st.write(f"{len(shown)} of {len(infos)} runs" + (f", {n_corrupt} corrupt" if n_corrupt else ""))
    st.dataframe(run_rows(shown), hide_index=True, width="stretch")
    if not shown:
        return

    st.subheader("Run details")
    info = pick_run(shown, lambda i: f"{i.kind}/{i.run_id}", key="run")
    if not readable(info):
        if info.manifest is not None:
            st.json(info.manifest, expanded=False)
        return
    cols = st.columns(3)
    cols[0].metric("Kind", info.kind)
    cols[1].metric("Model", info.model or "-")
    cols[2].metric("Seconds", f"{info.seconds:.2f}" if info.seconds is not None else "-")
    st.caption(f"Folder: `{info.path}`")
    st.json(info.manifest)


def _option_widget(spec: Any, key: str) -> Any:
    """One input widget for a verb option (see workbench.ui.launch.OptionSpec): a checkbox for a flag, a choice box,
    a text area for lists of texts (one per line, sent as typed), else a text field."""
    label = spec.flag.lstrip("-") + (" *" if spec.required else "")
    if spec.type == "flag":
        return st.checkbox(label, value=bool(spec.default), help=spec.help, key=key)
    if spec.choices and not spec.many:
        options = list(spec.choices)
        index = options.index(spec.default) if spec.default in options else None
        if index is None:  # no default among the choices: an empty first option leaves it out (the verb's default)
            options, index = ["", *options], 0
        return st.selectbox(label, options, index=index, format_func=lambda v: v if v != "" else "(default)",
                            help=spec.help, key=key)
    default = spec.default
    if spec.many and spec.lines:
        text = "\n".join(map(str, default)) if isinstance(default, (list, tuple)) else ""
        return st.text_area(label, value=text, help=spec.help + " (one per line)", key=key, height=80)
    if spec.many:
        text = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else ""
        return st.text_input(label, value=text, help=spec.help + " (separated by commas or spaces)", key=key)
    if spec.lines:
        return st.text_area(label, value="" if default is None else str(default), help=spec.help, key=key, height=68)
    return st.text_input(label, value="" if default is None else str(default), help=spec.help, key=key)


def _launch_section() -> None:
    """A form per analysis verb, generated from its command-line options; runs it with a progress bar."""
    from workbench.ui import launch

    st.header("Start an analysis")
    verbs = fetch_list(launch.analysis_verbs, failed="Cannot list the analyses", empty="No analysis verbs are installed.")
    if not verbs:
        return
    verb = st.selectbox("Analysis", verbs, key="launch_verb")
    specs = launch.verb_options(verb)
    with st.form(f"launch-{verb}"):
        cols = st.columns(3)
        values = {}
        for i, spec in enumerate(specs):
            with cols[i % 3]:
                values[spec.dest] = _option_widget(spec, key=f"launch-{verb}-{spec.dest}")
        submitted = st.form_submit_button("Run")
    if not submitted:
        return
    from workbench.paths import workbench_home

    try:
        argv = launch.build_argv(verb, values, confine=workbench_home())
    except ValueError as exc:
        st.error(str(exc))
        return
    st.code(launch.shell_command(argv), language="bash")
    result = run_verb_with_progress(argv)
    if result is None:
        return
    st.success(f"Stored run: {result.get('run', {}).get('path', '(no run folder reported)')}")
    st.json(result, expanded=False)


def _writer_alive(pid: Any) -> bool:
    import os

    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


@st.fragment(run_every=5)
def _demos_section() -> None:
    """Progress of the demo pass that ``make app`` starts in the background, refreshed every few seconds."""
    from workbench.ui.demo import read_status

    status = read_status()
    if not status or status.get("finished"):
        return
    total, done = int(status.get("total") or 0), status.get("done") or []
    current = status.get("current")
    if not _writer_alive(status.get("pid")):
        st.warning(f"The demo pass stopped after {len(done)} of {total} demos; run `workbench demo` to finish it.")
        return
    st.header("Demo runs")
    what = f"computing {current['kind']} on {current['model'] or '-'}" if current else "checking the store"
    st.progress(len(done) / max(total, 1), text=f"{len(done)} of {total} demos ready; {what}")
    failed = [d for d in done if d.get("status") == "failed"]
    for d in failed:
        st.error(f"demo {d['kind']} ({d.get('model')}) failed: {d.get('error')}")
    st.caption("Each demo's run appears in the table above and on its page as soon as it is stored.")


def _models_section() -> None:
    st.header("Models")
    try:
        from workbench.models import list_models
    except ImportError:
        st.info("No model registry is available (workbench.models cannot be imported).")
        return
    cards = fetch_list(list_models, failed="The model registry failed", empty="The model registry lists no models.",
                       warn=True)
    if not cards:
        return
    st.dataframe(model_rows(cards), hide_index=True, width="stretch")


def main() -> None:
    """Draw the page."""
    st.set_page_config(page_title=TITLE, layout="wide")
    st.title(TITLE)
    _demos_section()
    _runs_section()
    _launch_section()
    _models_section()


main()
