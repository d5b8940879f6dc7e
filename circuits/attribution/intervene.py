"""Interventions on transcoder features: set, scale or zero chosen features at chosen positions and rerun.

One call::

    from circuits.attribution.intervene import intervene
    res = intervene(model, transcoders, tokens, ["tc1.f12@5=3.0", "tc0.f3@2*0.5", "tc1.f7@4=0"],
                    mode="spliced", tokenizer=model.tokenizer)
    res.target_change, res.predicted_change     # [K] measured and graph-predicted change of each target
    res.top_tokens                              # TokenChange rows: the tokens whose probability moved most

``transcoders_or_sets``: layer -> transcoder (``circuits.dictionaries`` Dictionary), a list of
:class:`~circuits.attribution.replacement.FeatureSet`, or an already built ``ReplacementModel`` of the prompt.
An intervention is written ``NODE=VALUE`` (set), ``NODE*FACTOR`` (scale) or ``NODE`` alone with op ``zero``,
where NODE is a feature id of the node grammar (``tc1.f12@5``; ``tc1.f12`` alone: every position); or give
:class:`Intervention` objects. Scaling multiplies the value the feature takes in the rerun.

``mode`` (see :mod:`~circuits.attribution.rerun`): ``replacement`` reruns the frozen linearised replacement model
(attention patterns, norm scales and error nodes frozen; features linear on the clean active set): there the change
equals the graph's prediction to float error. ``spliced`` reruns the real model with the transcoders spliced in (the
MLPs replaced by the features plus the clean error, held fixed; live attention and norms unless
``freeze_attention``). ``propagate=False`` keeps every other feature at its clean value (direct effects only).

The prediction: with the graph's adjacency A (target row, source column) and the graph's feature activations a,
B[t, s] = A[t, s] / a_s is the change of node t's input per unit change of feature s; the features' changes solve
Δa = δ + D B Δa (δ: the intervention's own change, D: 1 for a free feature, the factor for a scaled one, 0 for a set
one), i.e. Δa = (I - D B)^{-1} δ, the sum over all paths; the targets move by B[targets] Δa.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from circuits.attribution.attribute import LogitTargets, attribute, salient_logits
from circuits.attribution.graph import AttributionGraph
from circuits.attribution.replacement import FeatureSet, ReplacementModel, feature_sets_from_transcoders
from circuits.attribution.rerun import Rerun, rerun
from circuits.frozen.facts import ModelFacts
from workbench.nodes import NodeIdError, parse

__all__ = ["Intervention", "InterventionError", "InterventionResult", "SignAgreement", "TokenChange", "intervene",
           "parse_intervention", "predict_change", "resolve", "sign_agreement"]


class InterventionError(ValueError):
    """An intervention that does not fit the prompt or the feature sets (bad id, layer, feature or position)."""


@dataclass(frozen=True)
class Intervention:
    """``op`` (``set``, ``scale`` or ``zero``) of feature ``feature`` of the layer-``layer`` set at ``position``
    (None: every position) with ``value`` (the value set, or the factor)."""

    layer: int
    feature: int
    position: int | None
    op: str = "zero"
    value: float = 0.0
    dictionary: str = "tc"

    @property
    def node_id(self) -> str:
        at = "" if self.position is None else f"@{self.position}"
        return f"{self.dictionary}{self.layer}.f{self.feature}{at}"

    def __str__(self) -> str:
        return {"set": f"{self.node_id}={self.value:g}", "scale": f"{self.node_id}*{self.value:g}"}.get(
            self.op, f"zero {self.node_id}")


_SPEC = re.compile(r"\s*(?P<node>[^=*\s]+)\s*(?:(?P<op>[=*])\s*(?P<value>\S+))?\s*")


def parse_intervention(text: str, op: str | None = None) -> Intervention:
    """``tc1.f12@5=3`` (set), ``tc1.f12@5*0.5`` (scale) or ``tc1.f12@5`` with ``op`` given (``zero``; ``set`` /
    ``scale`` take ``NODE=VALUE``). InterventionError naming the text for anything else."""
    m = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise InterventionError(f"intervention {text!r}: expected NODE=VALUE, NODE*FACTOR or NODE, e.g. tc1.f12@5=3.0")
    try:
        node = parse(m["node"])
    except NodeIdError as err:
        raise InterventionError(f"intervention {text!r}: {err}") from None
    if node.kind != "feature":
        raise InterventionError(f"intervention {text!r}: {m['node']!r} is not a feature; give a feature id like "
                                "tc1.f12@5 (tc1.f12 for every position)")
    sign = m["op"]
    kind = op or {"=": "set", "*": "scale", None: "zero"}[sign]
    if kind == "zero":
        if sign is not None and not (sign == "=" and _number(m["value"], text) == 0):
            raise InterventionError(f"intervention {text!r}: zero takes a feature id alone (e.g. tc1.f12@5)")
        value = 0.0
    elif sign is None:
        raise InterventionError(f"intervention {text!r}: {kind} needs a value, e.g. {m['node']}"
                                f"{'=' if kind == 'set' else '*'}2.0")
    else:
        value = _number(m["value"], text)
    if op == "set" and sign == "*":
        raise InterventionError(f"intervention {text!r}: set is written NODE=VALUE")
    return Intervention(int(node.layer), int(node.feature), node.position, kind, value, str(node.dictionary))


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InterventionError(f"intervention {whole!r}: {text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InterventionError(f"intervention {whole!r}: the value must be a finite number")
    return value


def resolve(rm: ReplacementModel, interventions: Sequence[Intervention | str]) -> list[Intervention]:
    """The interventions checked against ``rm`` (a layer with features, the set's prefix, a feature index and a
    position in range; positions given as None stay None). InterventionError naming the one that does not fit."""
    out = []
    for item in interventions:
        iv = parse_intervention(item) if isinstance(item, str) else item
        s = rm.sets.get(iv.layer)
        if s is None:
            raise InterventionError(f"{iv.node_id}: layer {iv.layer} has no transcoder; layers with transcoders: "
                                    f"{sorted(rm.sets) or 'none'}")
        if iv.dictionary != s.name:
            raise InterventionError(f"{iv.node_id}: layer {iv.layer}'s features are named {s.name}{iv.layer}.f<i>")
        if not 0 <= iv.feature < s.n_features:
            raise InterventionError(f"{iv.node_id}: feature index {iv.feature} out of range; layer {iv.layer} has "
                                    f"features 0..{s.n_features - 1}")
        if iv.position is not None and not 0 <= iv.position < rm.n_pos:
            raise InterventionError(f"{iv.node_id}: position {iv.position} is outside the prompt (positions "
                                    f"0..{rm.n_pos - 1})")
        if iv.op not in ("set", "scale", "zero"):
            raise InterventionError(f"{iv.node_id}: op must be set, scale or zero, got {iv.op!r}")
        out.append(iv)
    return out


def _edit(interventions: Sequence[Intervention]):
    def edit(layer: int, a: torch.Tensor) -> torch.Tensor:
        mine = [iv for iv in interventions if iv.layer == layer]
        if not mine:
            return a
        a = a.clone()
        for iv in mine:
            at = slice(None) if iv.position is None else iv.position
            a[at, iv.feature] = a[at, iv.feature] * iv.value if iv.op == "scale" else (
                iv.value if iv.op == "set" else 0.0)
        return a
    return edit


@dataclass
class TokenChange:
    """One vocabulary token at the last position: id, text, probability before and after, and the change."""

    token_id: int
    text: str
    p_before: float
    p_after: float

    @property
    def change(self) -> float:
        return self.p_after - self.p_before


@dataclass
class InterventionResult:
    """What an intervention did (tensors on the CPU; T positions, V vocabulary, K targets).

    ``logits_before`` / ``logits_after`` [T, V]: the rerun without and with the intervention (equal to the clean
    logits before, up to rounding); ``targets``: the targets' labels; ``target_before`` / ``target_after`` /
    ``target_change`` [K]: their values (read as the graph reads them: demeaned logits, a logit difference, a
    feature's pre-activation); ``predicted_change`` [K]: the change the attribution graph predicts (None, with
    ``prediction_note`` saying why, when an intervened feature is not a graph node); ``top_tokens``: the tokens whose
    probability at the last position moved most; ``acts_before`` / ``acts_after``: each set's activations [T, n].
    """

    mode: str
    interventions: list[Intervention]
    token_strings: list[str]
    logits_before: torch.Tensor
    logits_after: torch.Tensor
    targets: list[str]
    target_before: torch.Tensor
    target_after: torch.Tensor
    predicted_change: torch.Tensor | None
    top_tokens: list[TokenChange]
    acts_before: dict[int, torch.Tensor] = field(default_factory=dict)
    acts_after: dict[int, torch.Tensor] = field(default_factory=dict)
    prediction_note: str = ""

    @property
    def target_change(self) -> torch.Tensor:
        return self.target_after - self.target_before

    def sign_agrees(self) -> list[bool | None]:
        """Per target: does the measured change have the predicted sign (None without a prediction or where the
        predicted change is 0)."""
        if self.predicted_change is None:
            return [None] * len(self.targets)
        return [None if float(p) == 0 else bool((p > 0) == (m > 0))
                for p, m in zip(self.predicted_change.tolist(), self.target_change.tolist(), strict=True)]


def target_values(rm: ReplacementModel, run: Rerun, targets: LogitTargets) -> torch.Tensor:
    """[K]: each target's value in ``run`` (its direction read where it reads, plus its constant)."""
    layer, pos = targets.where(rm)
    return run.read(layer, pos, rm.n_layers) @ targets.vectors.T + targets.constants


def graph_index(graph: AttributionGraph) -> dict[tuple[int, int, int], int]:
    """(layer, position, feature) -> the feature's node index in ``graph``."""
    return {tuple(row): i for i, row in enumerate(graph.features.tolist())}


def predict_change(graph: AttributionGraph, interventions: Sequence[Intervention], *, propagate: bool = True,
                   clean_acts: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor | None:
    """[K]: the targets' change the graph predicts for ``interventions`` (see the module docstring); None when an
    intervention changes a feature that is not one of the graph's nodes (set on a feature inactive on the prompt,
    or any change of an active feature a cap left out). ``clean_acts`` (layer -> [T, n]) tells an inactive feature
    from one left out; without it a feature missing from a capped graph counts as left out."""
    index = graph_index(graph)
    F, A = graph.n_features, graph.adjacency
    a = graph.activations.to(A.dtype)
    delta, damp = torch.zeros(F, dtype=A.dtype), torch.ones(F, dtype=A.dtype)
    for iv in interventions:
        for p in range(graph.n_pos) if iv.position is None else [iv.position]:
            i = index.get((iv.layer, p, iv.feature))
            if i is None:
                if clean_acts is not None:
                    active = bool(clean_acts[iv.layer][p, iv.feature] != 0)
                else:
                    active = graph.n_features < graph.n_active
                if active or (iv.op == "set" and iv.value != 0):
                    return None
                continue  # an inactive feature zeroed or scaled stays off
            new = a[i] * iv.value if iv.op == "scale" else (iv.value if iv.op == "set" else 0.0)
            delta[i] = new - a[i]
            damp[i] = iv.value if iv.op == "scale" else 0.0
    B = A[:, :F] / a[None, :]
    change = delta.clone()
    if propagate:
        for _ in range(graph.n_layers + 1):  # features feed later layers only: the series ends by then
            change = delta + damp * (B[:F] @ change)
    return B[graph.logit_start:] @ change


def replacement_of(model, transcoders_or_sets, tokens: torch.Tensor, dtype: torch.dtype) -> ReplacementModel:
    """The replacement model of ``tokens`` [T] from transcoders by layer, feature sets, or a built one."""
    if isinstance(transcoders_or_sets, ReplacementModel):
        built = transcoders_or_sets
        if not torch.equal(built.tokens.cpu(), tokens.reshape(-1).long().cpu()):
            raise ValueError("the ReplacementModel given was built for another prompt than prompt_tokens")
        return built
    if isinstance(transcoders_or_sets, Mapping):
        sets = feature_sets_from_transcoders(transcoders_or_sets, ModelFacts.of(model))
    else:
        sets = list(transcoders_or_sets)
        if not all(isinstance(s, FeatureSet) for s in sets):
            raise TypeError("transcoders_or_sets: give layer -> transcoder, a list of FeatureSet or a ReplacementModel")
    return ReplacementModel(model, tokens, sets, dtype=dtype)


def intervene(model, transcoders_or_sets, prompt_tokens, interventions: Sequence[Intervention | str], *,
              mode: str = "replacement", freeze_attention: bool = False, propagate: bool = True,
              targets: LogitTargets | None = None, graph: AttributionGraph | None = None, predict: bool = True,
              top_k: int = 10, tokenizer=None, dtype: torch.dtype = torch.float32) -> InterventionResult:
    """Apply ``interventions`` to the prompt ``prompt_tokens`` [T] and rerun in ``mode`` (module docstring).

    ``targets``: default the salient logits of the clean run; ``graph``: the attribution graph of the same
    replacement and targets used for the prediction (computed when None and ``predict``); ``top_k``: how many
    tokens :attr:`InterventionResult.top_tokens` lists."""
    rm = replacement_of(model, transcoders_or_sets, torch.as_tensor(prompt_tokens), dtype)
    ivs = resolve(rm, interventions)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    targets = targets or salient_logits(rm, tokenizer=tokenizer)
    kw = {"mode": mode, "freeze_attention": freeze_attention, "propagate": propagate}
    before, after = rerun(rm, **kw), rerun(rm, _edit(ivs), **kw)
    predicted, note = None, ""
    if predict:
        if graph is None:
            graph = attribute(rm, targets, tokenizer=tokenizer)
        clean = {la: s.encode(rm.pre[la]).cpu() for la, s in rm.sets.items()}
        predicted = predict_change(graph, ivs, propagate=propagate, clean_acts=clean)
        if predicted is None:
            note = ("an intervention changes a feature that is not a node of the graph (set while inactive on the "
                    "prompt, or left out by the feature cap): no prediction")
        elif graph.n_features < graph.n_active:
            note = f"the graph keeps {graph.n_features} of {graph.n_active} active features: the prediction is partial"
    p0, p1 = (torch.softmax(r.logits[-1].double(), -1) for r in (before, after))
    moved = (p1 - p0).abs().topk(min(top_k, p0.numel())).indices.tolist()

    def text(t: int) -> str:
        return tokenizer.decode([t]) if tokenizer is not None else str(t)

    return InterventionResult(
        mode, ivs, [text(t) for t in rm.tokens.tolist()], before.logits.cpu(), after.logits.cpu(),
        list(targets.labels), target_values(rm, before, targets).cpu(), target_values(rm, after, targets).cpu(),
        None if predicted is None else predicted.cpu(),
        [TokenChange(t, text(t), float(p0[t]), float(p1[t])) for t in moved],
        {k: v.cpu() for k, v in before.acts.items()}, {k: v.cpu() for k, v in after.acts.items()}, note)


@dataclass
class SignAgreement:
    """Single-feature zero-ablations: ``nodes`` (feature ids), the change of target ``target`` predicted by the
    graph and measured in ``mode``, each [N]."""

    target: str
    mode: str
    nodes: list[str]
    predicted: torch.Tensor
    measured: torch.Tensor

    @property
    def agree(self) -> torch.Tensor:
        """[N] bool: the measured change has the predicted sign."""
        return (self.predicted > 0) == (self.measured > 0)

    @property
    def rate(self) -> float:
        """The fraction of ablations whose measured change has the predicted sign (nan for none)."""
        return float(self.agree.double().mean()) if self.nodes else float("nan")


def sign_agreement(rm: ReplacementModel, graph: AttributionGraph, targets: LogitTargets, *, n: int = 16,
                   target: int = 0, mode: str = "spliced", freeze_attention: bool = False,
                   propagate: bool = True) -> SignAgreement:
    """Zero each of the ``n`` graph features with the largest predicted effect on target ``target`` alone, rerun in
    ``mode`` and compare the measured change of that target with the graph's prediction (features whose predicted
    effect is 0 are skipped)."""
    F, A = graph.n_features, graph.adjacency
    a = graph.activations.to(A.dtype)
    B = A[:, :F] / a[None, :]
    row = B[graph.logit_start + target]
    total = row.clone()  # the target's total effect per unit of each feature: row (I - B)^-1, summed as a series
    if propagate:
        for _ in range(graph.n_layers + 1):
            total = row + total @ B[:F]
    predicted = -a * total  # [F]: zeroing feature s alone
    order = [i for i in predicted.abs().argsort(descending=True).tolist() if float(predicted[i]) != 0][:n]
    kw = {"mode": mode, "freeze_attention": freeze_attention, "propagate": propagate}
    before = float(target_values(rm, rerun(rm, **kw), targets)[target])
    ids = graph.node_ids()
    measured = []
    for i in order:
        layer, pos, feat = graph.features[i].tolist()
        iv = Intervention(layer, feat, pos, "zero", 0.0, graph.names.get(layer, "tc"))
        after = rerun(rm, _edit([iv]), **kw)
        measured.append(float(target_values(rm, after, targets)[target]) - before)
    return SignAgreement(targets.labels[target], mode, [ids[i] for i in order], predicted[order].cpu(),
                         torch.tensor(measured, dtype=A.dtype))
