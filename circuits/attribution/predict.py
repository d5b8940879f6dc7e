"""What the attribution graph predicts an intervention does, and how often the sign holds in a rerun.

With the graph's adjacency A (target row, source column) and its feature activations a, B[t, s] = A[t, s] / a_s is
the change of node t's input per unit change of feature s. The features' changes solve Δa = δ + D B Δa (δ: the
intervention's own change; D: 1 for a free feature, the factor for a scaled one, 0 for a set one), that is
Δa = (I - D B)^{-1} δ, the sum over every path; the targets move by B[targets] Δa. Features feed later layers only,
so the series ends after n_layers + 1 terms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from circuits.attribution.attribute import LogitTargets
from circuits.attribution.graph import AttributionGraph
from circuits.attribution.interventions import Intervention, edit_of
from circuits.attribution.replacement import ReplacementModel
from circuits.attribution.rerun import Rerun, rerun

__all__ = ["SignAgreement", "graph_index", "predict_change", "sign_agreement", "target_values"]


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
        after = rerun(rm, edit_of([iv]), **kw)
        measured.append(float(target_values(rm, after, targets)[target]) - before)
    return SignAgreement(targets.labels[target], mode, [ids[i] for i in order], predicted[order].cpu(),
                         torch.tensor(measured, dtype=A.dtype))
