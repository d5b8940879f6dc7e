"""Ground truths: zoo models whose circuits are known independently of every discovery method.

A :class:`GroundTruth` names its model (``spec``, loaded with :func:`workbench.models.load_model`), its circuit
(``nodes``: heads ``L{l}.H{h}`` and MLPs ``mlp{l}``; ``edges``: ``"{sender}->{receiver}"`` with senders ``emb`` /
heads / MLPs and receivers heads / MLPs / ``logit``, a receiving head reading its senders through its queries, keys
and values together) and its task
(:meth:`GroundTruth.make_task`). ``how`` says where the circuit comes from:

- ``"designed"``: strict interchange training (:mod:`workbench.ground_truth.strict`) fixes both nodes and edges;
- ``"observed"``: read off the trained model's attention patterns (``toy/induction-2l``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from workbench.data.task_base import Task
from workbench.ground_truth.designs import DESIGNS, Design


class GroundTruthError(LookupError):
    """An unknown ground truth, a task its model does not have, or a model that is not the ground truth's."""


@dataclass(frozen=True)
class GroundTruth:
    """A model with a known circuit and the task that circuit solves.

    task_name: the one task the model has (``make_task(..., task=other)`` raises GroundTruthError).
    """

    name: str
    description: str
    spec: str
    nodes: frozenset[str]
    edges: frozenset[str]
    how: Literal["designed", "observed"]
    task_name: str
    builder: Callable[[object, int, int], Task] = field(repr=False, compare=False)

    def make_task(self, model, n: int = 64, seed: int = 0, task: str | None = None) -> Task:
        """The circuit's task on ``model`` (this ground truth's loaded model): ``n`` clean/corrupted pairs from ``seed``.

        task: the task's name (default, and only accepted value, :attr:`task_name`).
        """
        if task is not None and task.replace("_", "-") != self.task_name:
            raise GroundTruthError(f"ground truth {self.name!r} ({self.spec}) has no task {task!r}; its task: "
                                   f"{self.task_name!r}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        return self.builder(model, n, seed)


def _check_model(model, design: Design) -> None:
    cfg = model.cfg
    got = (cfg.d_vocab, cfg.n_layers, cfg.n_heads)
    want = (len(design.names), design.n_layers, design.n_heads)
    if got != want:
        raise GroundTruthError(f"ground truth {design.name!r} needs its own model toy/{design.name} (vocabulary, "
                               f"layers, heads = {want}); got a model with {got}")


def _designed_task(design: Design) -> Callable[[object, int, int], Task]:
    def build(model, n: int, seed: int) -> Task:
        _check_model(model, design)
        clean, corrupted, correct, incorrect = design.pairs(torch.Generator().manual_seed(seed), n)
        words = lambda rows: [" ".join(design.names[i] for i in row[1:].tolist()) for row in rows]  # noqa: E731
        return Task(
            name=design.task_name, clean_tokens=clean, corrupted_tokens=corrupted,
            answer_positions=torch.full((n,), clean.shape[1] - 1, dtype=torch.long), correct=correct,
            incorrect=incorrect, prompts=words(clean), corrupted_prompts=words(corrupted), metric_name="logit_diff",
            description=(f"{design.description} Metric logit_diff at the last position: the clean answer's logit "
                         "minus the corrupted input's answer's logit."),
            info={"ground_truth": design.name, "seed": seed},
        )

    return build


def _designed(design: Design) -> GroundTruth:
    return GroundTruth(design.name, design.description, f"toy/{design.name}", design.nodes, design.edges, "designed",
                       design.task_name, _designed_task(design))


# thresholds on the mean attention scores of toy/induction-2l's heads
PREVIOUS_TOKEN_MIN = 0.4
CURRENT_TOKEN_MIN = 0.5
INDUCTION_MIN = 0.3


def induction_scores(hf_model, half_len: int, vocab: int, n: int = 64, seed: int = 12345) -> dict[str, list]:
    """Mean attention scores of every head of a 2-layer induction toy on ``n`` repeated sequences ``BOS + A + A``.

    Returns ``previous_token`` / ``current_token`` / ``induction`` as [layer][head] lists: attention to the previous
    position, to the own position, and from each repeated token to the token after its earlier copy
    (:func:`workbench.induction_toy.previous_token_scores`, :func:`~workbench.induction_toy.induction_head_scores`).
    """
    from workbench.ground_truth.strict import components
    from workbench.induction_toy import induction_head_scores, induction_tokens, previous_token_scores

    patterns: list[torch.Tensor] = []
    with torch.no_grad():
        components(hf_model, induction_tokens(n, half_len, vocab, seed), patterns)
    q = torch.arange(patterns[0].shape[-1])
    return {"previous_token": [previous_token_scores(p).tolist() for p in patterns],
            "current_token": [p[:, :, q, q].mean(dim=(0, 2)).tolist() for p in patterns],
            "induction": [induction_head_scores(p, half_len).tolist() for p in patterns]}


def induction_observed(scores: dict[str, list]) -> tuple[frozenset[str], frozenset[str]]:
    """The circuit of a 2-layer induction toy read off its attention scores (:func:`induction_scores`): (nodes, edges).

    Layer-0 heads: previous-token heads (previous-token score at least ``PREVIOUS_TOKEN_MIN``), which the induction
    head's keys read, and current-token heads (own-position score at least ``CURRENT_TOKEN_MIN``), which its queries
    read; layer-1 induction heads: induction score at least ``INDUCTION_MIN``. Edges: the embeddings into all of
    them, every layer-0 head of the circuit into every induction head, every induction head into the logits.
    """
    prev = [f"L0.H{h}" for h, s in enumerate(scores["previous_token"][0]) if s >= PREVIOUS_TOKEN_MIN]
    cur = [f"L0.H{h}" for h, s in enumerate(scores["current_token"][0]) if s >= CURRENT_TOKEN_MIN]
    ind = [f"L1.H{h}" for h, s in enumerate(scores["induction"][1]) if s >= INDUCTION_MIN]
    first = sorted(set(prev + cur))
    edges = {f"emb->{h}" for h in first + ind} | {f"{p}->{i}" for p in first for i in ind} | {f"{i}->logit" for i in ind}
    return frozenset(first + ind), frozenset(edges)


def _induction_2l() -> GroundTruth:
    from transformers import AutoModelForCausalLM

    from workbench import zoo
    from workbench.data.task_induction import make_induction

    cfg = zoo.get("induction-2l").config
    hf = AutoModelForCausalLM.from_pretrained(str(zoo.model_dir("induction-2l"))).eval()
    nodes, edges = induction_observed(induction_scores(hf, int(cfg["half_len"]), int(cfg["vocab"])))

    def build(model, n: int, seed: int) -> Task:
        if model.cfg.d_vocab != int(cfg["vocab"]) + 1 or model.cfg.n_layers != 2:
            raise GroundTruthError(f"ground truth 'induction-2l' needs toy/induction-2l; got a model with vocabulary "
                                   f"{model.cfg.d_vocab} and {model.cfg.n_layers} layers")
        return make_induction(model.tokenizer, n=n, seed=seed, half_len=int(cfg["half_len"]))

    return GroundTruth(
        "induction-2l", "toy/induction-2l: 2 layers, 2 heads, trained on repeats; its circuit observed from attention "
        "patterns: a current-token and a previous-token head in layer 0 feeding the induction head in layer 1.",
        "toy/induction-2l", nodes, edges, "observed", "induction", build)


_OBSERVED: dict[str, Callable[[], GroundTruth]] = {"induction-2l": _induction_2l}


def names() -> list[str]:
    """Names of the ground truths (nothing is built)."""
    return sorted([*DESIGNS, *_OBSERVED])


def get(name: str) -> GroundTruth:
    """Ground truth ``name`` (a ``toy/`` prefix is accepted); an unknown name raises GroundTruthError listing them.

    An observed ground truth's circuit is read from its built model: asking for it builds ``toy/induction-2l``.
    """
    key = name.removeprefix("toy/") if isinstance(name, str) else name
    if key in DESIGNS:
        return _designed(DESIGNS[key]())
    if key in _OBSERVED:
        return _OBSERVED[key]()
    raise GroundTruthError(f"unknown ground truth {name!r}; ground truths: {', '.join(names())}")


def ground_truths(how: str | None = None) -> list[GroundTruth]:
    """Every ground truth (``how``: only ``"designed"`` or only ``"observed"`` ones), by name."""
    if how not in (None, "designed", "observed"):
        raise ValueError(f"unknown how {how!r}; accepted: designed, observed (or None for all)")
    chosen = [n for n in names() if how is None or (n in DESIGNS) == (how == "designed")]
    return [get(n) for n in chosen]
