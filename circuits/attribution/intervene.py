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

The result, :class:`InterventionResult` (tensors on the CPU; T positions, V vocabulary, K targets): ``mode``,
``interventions`` (resolved), ``token_strings`` [T], ``logits_before`` / ``logits_after`` [T, V], ``targets`` (labels),
``target_before`` / ``target_after`` / ``target_change`` [K] (the targets read as the graph reads them: demeaned
logits, a logit difference or a feature's pre-activation), ``predicted_change`` [K] or None (the graph's prediction,
:mod:`~circuits.attribution.predict`; ``prediction_note`` says why it is missing or partial), ``sign_agrees()``,
``top_tokens`` (:class:`TokenChange`: id, text, probability before and after at the last position, largest |change|
first), ``acts_before`` / ``acts_after`` (layer -> [T, n] feature activations).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from circuits.attribution.attribute import LogitTargets, attribute, salient_logits
from circuits.attribution.graph import AttributionGraph
from circuits.attribution.interventions import (
    Intervention,
    InterventionError,
    edit_of,
    parse_intervention,
    resolve,
)
from circuits.attribution.predict import SignAgreement, predict_change, sign_agreement, target_values
from circuits.attribution.replacement import FeatureSet, ReplacementModel, feature_sets_from_transcoders
from circuits.attribution.rerun import rerun
from circuits.frozen.facts import ModelFacts

__all__ = ["Intervention", "InterventionError", "InterventionResult", "SignAgreement", "TokenChange", "intervene",
           "parse_intervention", "predict_change", "resolve", "sign_agreement"]


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
    before, after = rerun(rm, **kw), rerun(rm, edit_of(ivs), **kw)
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
