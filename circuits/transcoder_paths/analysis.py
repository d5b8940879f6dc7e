"""Transcoder circuits behind the analysis contract (:mod:`workbench.analysis`): run kind ``tc-circuit``
(``workbench tc-circuit``). Artifacts: see :mod:`circuits.transcoder_paths.circuit`.

Usage (notebook)::

    from circuits.transcoder_paths.analysis import TC_CIRCUIT, TcCircuitConfig
    cfg = TcCircuitConfig(prompt="The city was founded in the early years of the", train_tokens=20_480)
    result = TC_CIRCUIT.run(model, cfg)           # no --transcoder: trains TopK-16 transcoders for every layer first
    result.graphs["circuit"].figure().show()
    result.tables["paths"].head()

Without ``correct``/``incorrect`` a prompt's target is the logit difference between the model's two most likely
next tokens at ``position``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from workbench.analysis import MAX_EXAMPLES, Analysis, Config, ConfigError, Result, option

__all__ = ["TC_CIRCUIT", "TcCircuitConfig", "to_result"]


@dataclass
class TcCircuitConfig(Config):
    """Options of ``workbench tc-circuit``."""

    prompt: str | None = option(None, "the prompt text (BOS is prepended when the tokenizer has one)", lines=True)
    task: Literal["induction", "greater-than", "ioi", "sentiment"] | None = option(
        None, "a task instead of --prompt: its --example-th prompt")
    example: int = option(0, "which example of the task", minimum=0)
    n: int = option(16, "task examples for the clean/spliced metric", minimum=1, maximum=MAX_EXAMPLES)
    transcoder: list[str] | None = option(None, "transcoder folders in SAELens format (one per layer)", lines=True,
                                          path=True)
    train_tokens: int = option(0, "with no --transcoder: first train TopK-16 transcoders (4x) for every layer on this "
                                  "many wiki tokens (0: --transcoder is required)", minimum=0)
    target: str = option("logit", "'logit' (a logit difference) or a feature id like tc5.f12@7")
    correct: str | None = option(None, "token (text) whose logit counts +1 (default: the task's, or the top "
                                       "prediction)", lines=True)
    incorrect: str | None = option(None, "token (text) whose logit counts -1 (default: the task's, or the second "
                                         "prediction)", lines=True)
    position: int = option(-1, "target position (default: the last; negative counts from the end)")
    beam_width: int = option(8, "paths kept per step (circuit-tracer's and the transcoder paper's num_branches)",
                             minimum=1)
    depth: int = option(4, "steps back from the target", minimum=1)

    def validate(self) -> None:
        if (self.prompt is None) == (self.task is None):
            raise ConfigError("give either --prompt or --task (not both)")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError("--prompt is empty: give at least one non-blank character")
        if not self.transcoder and not self.train_tokens:
            raise ConfigError("give --transcoder FOLDER (one per layer), or --train-tokens N to train them first")
        if self.correct is not None and self.correct == self.incorrect:
            raise ConfigError(f"--correct and --incorrect are the same token {self.correct!r}: the difference is 0")
        if self.task is not None and self.example >= self.n:
            raise ConfigError(f"--example {self.example} is not among the task's --n {self.n} examples (0..{self.n - 1})")
        target_layer(self.target)


def target_layer(target: str) -> int | None:
    """The transcoder layer a ``--target`` feature id reads (None for ``logit``); ConfigError for a malformed id."""
    if target == "logit":
        return None
    from workbench.circuit import parse_node_id

    try:
        parsed = parse_node_id(target)
    except ValueError:
        parsed = {"kind": None}
    if parsed["kind"] != "feature" or not target.startswith("tc"):
        raise ConfigError(f"--target {target!r}: use 'logit' or a transcoder feature id like 'tc5.f123@7'")
    return int(parsed["layer"])


def _single_token(tokenizer: Any, text: str, what: str) -> int:
    from workbench.data.tokens import encode

    ids = encode(tokenizer, text)
    if len(ids) != 1:
        raise ConfigError(f"--{what} {text!r} is {len(ids)} tokens for this tokenizer; give a single token")
    return ids[0]


def _transcoders(model: Any, cfg: TcCircuitConfig, progress: bool) -> tuple[dict[int, Any], int]:
    """The transcoders by layer (loaded, or trained on ``train_tokens``) and the tokens they were trained on."""
    from circuits.dictionaries.transcoder_set import transcoders_by_layer

    return transcoders_by_layer(model, cfg.transcoder, cfg.train_tokens, progress=progress)


def to_result(res: Any) -> Result:
    """A :class:`~circuits.transcoder_paths.circuit.TcCircuitResult` as a contract :class:`Result`."""
    s = res.summary
    out = Result(graphs={"circuit": res.circuit}, tables={"paths": res.paths, "contributions": res.contributions},
                 summary=dict(s), objects={"tc_circuit": res})
    out.lines = [f"target {s['target_label']}: {s['target_value']:.4f} (sum of contributions {s['contributions_sum']:.4f})",
                 f"circuit: {s['nodes']} nodes, {s['edges']} edges; top paths:"]
    out.lines += [f"  {v:+.4f}  {p}" for p, v in zip(res.paths["path"][:8], res.paths["value"][:8], strict=True)]
    if "metric_clean" in s:
        out.lines.append(f"{s['metric']}: clean {s['metric_clean']:.4f}, spliced {s['metric_spliced']:.4f}")
    return out


def _compute(model: Any, cfg: TcCircuitConfig, progress: bool) -> Result:
    import torch

    from circuits.transcoder_paths.circuit import tc_circuit
    from workbench.data.tasks import make_task
    from workbench.data.tokens import bos_id, encode
    from workbench.limits import check_context

    tokenizer = model.tokenizer
    task = None
    if cfg.task:
        task = make_task(cfg.task, tokenizer, n=max(cfg.n, cfg.example + 1))
        check_context(model, int(task.seq_len), f"a row of --task {cfg.task}")
        tokens = task.clean_tokens[cfg.example]
        correct, incorrect = int(task.correct[cfg.example]), int(task.incorrect[cfg.example])
        position = int(task.answer_positions[cfg.example]) if cfg.position == -1 else cfg.position
    else:
        bos = bos_id(tokenizer)
        tokens = torch.tensor(([bos] if bos is not None else []) + encode(tokenizer, cfg.prompt))
        check_context(model, len(tokens), "the --prompt")
        position = cfg.position
    if not -len(tokens) <= position < len(tokens):
        raise ConfigError(f"--position {position} is outside the prompt's {len(tokens)} tokens")
    if task is None:
        with torch.no_grad():
            top2 = model(tokens[None].to(model.W_E.device), return_type="logits")[0, position].topk(2).indices.tolist()
        correct, incorrect = top2
    if cfg.correct is not None:
        correct = _single_token(tokenizer, cfg.correct, "correct")
    if cfg.incorrect is not None:
        incorrect = _single_token(tokenizer, cfg.incorrect, "incorrect")
    if correct == incorrect:
        raise ConfigError(f"the correct and incorrect answers are the same token {tokenizer.decode([correct])!r}")
    layer = target_layer(cfg.target)
    if layer is not None and not 0 <= layer < int(model.cfg.n_layers):
        raise ConfigError(f"--target {cfg.target}: layer {layer} does not exist; the model has layers "
                          f"0..{int(model.cfg.n_layers) - 1}")
    transcoders, trained_tokens = _transcoders(model, cfg, progress)
    if layer is not None and layer not in transcoders:
        raise ConfigError(f"--target {cfg.target}: no transcoder at layer {layer}; transcoder layers: "
                          f"{sorted(transcoders)}")
    res = tc_circuit(model, tokens, transcoders, cfg.target, correct=correct, incorrect=incorrect,
                     position=position, num_branches=cfg.beam_width, max_depth=cfg.depth, task=task)
    res.summary.update({"correct_token": tokenizer.decode([correct]), "incorrect_token": tokenizer.decode([incorrect])})
    if trained_tokens:
        res.summary["transcoder_tokens"] = trained_tokens
    out = to_result(res)
    out.params = {"correct_id": int(correct), "incorrect_id": int(incorrect), "position_used": position}
    return out


def _figures(run: Any) -> dict[str, Any]:
    import plotly.graph_objects as go

    from workbench.circuit import Circuit

    paths = run.table("paths").head(15)
    bars = go.Figure(go.Bar(x=paths["value"][::-1], y=paths["path"][::-1], orientation="h"))
    bars.update_layout(title="Top paths by value", xaxis_title="value", height=max(300, 26 * len(paths) + 100),
                       margin={"l": 260})
    return {"circuit": Circuit.from_json(run.json("circuit")).figure(), "paths": bars}


TC_CIRCUIT = Analysis(
    kind="tc-circuit", verb="tc-circuit", config=TcCircuitConfig, compute=_compute, figures=_figures,
    help="greedy path search through transcoders from a logit difference or a feature; stores a tc-circuit run",
    describe="Freeze attention patterns and norm scales from the clean run of one prompt, replace the MLPs of the given "
             "layers by transcoders plus error nodes, search paths back from the target and store the circuit.",
    demo=TcCircuitConfig(prompt="The city was founded in the early years of the", train_tokens=20_480),
    demo_model="toy/llama-d64-l4")
