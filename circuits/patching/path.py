"""Path patching (Wang et al. 2022): the effect of a sender on the metric through chosen receivers only.

For each sender (a head or MLP, optionally at one position):

1. run the clean prompts with the sender replaced by its ablation value (``"corrupted"``: the same example's
   corrupted run; ``"mean"``; ``"zero"``) and every other attention head frozen at its clean output (MLPs
   recompute, as in the published method); record what each receiver computes there;
2. run the clean prompts again with only the receivers replaced by what they computed in step 1;
3. score = m(clean) - m(step 2), m the task metric averaged over examples (positive: the path carries the
   behaviour, the same orientation as activation patching and CD-T relevance).

Receivers: ``"logits"`` (the direct path to the output: the score is read from step 1's own logits) or node ids of
heads / MLPs (``L5.H1``, ``L5.H1@9``, ``mlp6``); a head receiver is patched at its output z (all of its inputs,
``receiver_input="z"``) or at its query (``"q"``), key (``"k"``) or value (``"v"``) only. A receiver before (or at the
layer of) a sender is not reached by it; a sender that reaches no receiver is an error.
Senders share forwards as batch rows, one sender per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from circuits.frozen.facts import ModelFacts
from circuits.patching.ablation import (
    PatchingInputError,
    References,
    check_ablation,
    chunks,
    default_rows,
    patched_forward,
    references,
    row_metric,
    rows,
)
from circuits.patching.nodes import component_id, components, keep_masks
from workbench.data.task_base import Task
from workbench.nodes import Node

__all__ = ["RECEIVER_INPUTS", "all_components", "path_head_scores", "path_patching_scores", "reaches"]

RECEIVER_INPUTS: tuple[str, ...] = ("z", "q", "k", "v")


def reaches(sender: Node, receiver: Node) -> bool:
    """Whether the sender's output can reach the receiver (heads read the layer's input, MLPs the attention's output)."""
    if sender.is_mlp or not receiver.is_mlp:
        return sender.layer < receiver.layer
    return sender.layer <= receiver.layer


def all_components(model, task: Task, *, per_position: bool = False, include_mlps: bool = False) -> list[str]:
    """Node ids of every head (and MLP) in (layer, head[, position]) order, MLPs after the heads of their layer."""
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    out = []
    for layer in range(L):
        names = [f"L{layer}.H{h}" for h in range(H)] + ([f"mlp{layer}"] if include_mlps else [])
        out += [f"{n}@{p}" for n in names for p in range(P)] if per_position else names
    return out


def _check_receiver_input(model, receiver_input: str, receivers: list[Node]) -> str:
    if receiver_input not in RECEIVER_INPUTS:
        raise PatchingInputError(f"unknown receiver_input {receiver_input!r}; accepted: {', '.join(RECEIVER_INPUTS)}")
    facts = ModelFacts.of(model)
    if receiver_input in ("k", "v") and facts.n_kv_heads != facts.n_heads:
        group = facts.n_rep
        by_kv: dict[tuple, set] = {}
        for r in receivers:
            if not r.is_mlp:
                by_kv.setdefault((r.layer, r.head // group, r.positions), set()).add(r.head)
        for (layer, kv, _), heads in by_kv.items():
            if len(heads) != group:
                raise PatchingInputError(
                    f"receiver_input {receiver_input!r}: layer {layer} shares key/value head {kv} among query heads "
                    f"{kv * group}..{kv * group + group - 1}; name all of them as receivers or use 'z' or 'q'"
                )
    return receiver_input


@torch.no_grad()
def path_patching_scores(
    model,
    task: Task,
    senders: Sequence[str] | None = None,
    receivers: Sequence[str] | str = "logits",
    *,
    receiver_input: str = "z",
    ablation: str = "corrupted",
    refs: References | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Path patching scores of each sender through the receivers: Tensor [len(senders)].

    senders: node ids (default every head, whole). receivers: ``"logits"`` or node ids. Raises PatchingInputError
    for out-of-range components, and for a sender that comes after (or at the layer of) every receiver.
    """
    check_ablation(ablation)
    refs = refs if refs is not None else references(model, task, ablation)
    L, H, P, n = model.cfg.n_layers, model.cfg.n_heads, task.seq_len, task.batch_size
    send = components(model, task, senders if senders is not None else all_components(model, task))
    if not send:
        raise PatchingInputError("no senders: give head or MLP node ids")
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise PatchingInputError(f"receivers must be 'logits' or a list of node ids, got {receivers!r}")
    recv: list[Node] = [] if to_logits else components(model, task, receivers)
    if not to_logits:
        if not recv:
            raise PatchingInputError("no receivers: give head or MLP node ids, or 'logits'")
        _check_receiver_input(model, receiver_input, recv)
        for s in send:
            if not any(reaches(s, r) for r in recv):
                raise PatchingInputError(
                    f"sender {component_id(s)} comes after (or at the layer of) every receiver "
                    f"({', '.join(component_id(r) for r in recv)}); senders must precede their receivers"
                )
    recv_heads, recv_mlps = keep_masks(recv, L, H, P)
    head_hook = "attn.hook_z" if receiver_input == "z" else f"attn.hook_{receiver_input}"
    recv_layers_h = recv_heads.flatten(1).any(1).nonzero().flatten().tolist()
    recv_layers_m = recv_mlps.any(1).nonzero().flatten().tolist()
    capture = tuple(f"blocks.{layer}.{head_hook}" for layer in recv_layers_h)
    capture += tuple(f"blocks.{layer}.hook_mlp_out" for layer in recv_layers_m)
    device = refs.clean_z.device
    max_rows = max_rows or default_rows(model, task)
    out = []
    for sl in tqdm(list(chunks(len(send), n, max_rows)), desc="path patching", disable=not progress):
        chunk = send[sl]
        k = len(chunk)
        masks = [keep_masks([c], L, H, P) for c in chunk]
        s_heads = torch.stack([m[0] for m in masks]).to(device).repeat_interleave(n, 0)  # [R, L, P, H]
        s_mlps = torch.stack([m[1] for m in masks]).to(device).repeat_interleave(n, 0)  # [R, L, P]
        # the forward must start at or below every receiver too: a receiver below the chunk's senders is recorded
        # from the clean run (the bridge still runs, and hooks, the layers below its start, on meaningless inputs)
        start = min([c.layer for c in chunk] + ([] if to_logits else recv_layers_h + recv_layers_m))
        every = torch.ones(k * n, P, H, dtype=torch.bool, device=device)
        # step 1: sender ablated, every other head frozen at its clean output, receivers recorded
        z_edits = {
            layer: (every, torch.where(s_heads[:, layer].unsqueeze(-1), rows(refs.ref_z[layer], k), rows(refs.clean_z[layer], k)))
            for layer in range(start, L)
        }
        mlp_edits = {
            layer: (s_mlps[:, layer], rows(refs.ref_mlp[layer], k))
            for layer in sorted({c.layer for c in chunk if c.is_mlp})
        }
        logits, seen = patched_forward(
            model, refs, k * n, z_edits=z_edits, mlp_edits=mlp_edits, start_layer=start, capture=capture,
            tokens=task.clean_tokens,
        )
        if to_logits:
            out.append(refs.clean_metric - row_metric(task, logits, k).cpu())
            continue
        del logits
        # step 2: the clean run with only the receivers replaced by what they computed in step 1
        hook_edits, mlp2 = {}, {}
        for layer in recv_layers_h:
            name = f"blocks.{layer}.{head_hook}"
            mask = recv_heads[layer].to(device)
            if receiver_input in ("k", "v") and seen[name].shape[2] != H:
                mask = mask.reshape(P, seen[name].shape[2], -1).any(-1)
            hook_edits[name] = (mask.unsqueeze(0).expand(k * n, *mask.shape), seen[name])
        for layer in recv_layers_m:
            mask = recv_mlps[layer].to(device)
            mlp2[layer] = (mask.unsqueeze(0).expand(k * n, P), seen[f"blocks.{layer}.hook_mlp_out"])
        start2 = min(recv_layers_h + recv_layers_m)
        logits, _ = patched_forward(
            model, refs, k * n, mlp_edits=mlp2, hook_edits=hook_edits, start_layer=start2, tokens=task.clean_tokens
        )
        out.append(refs.clean_metric - row_metric(task, logits, k).cpu())
    return torch.cat(out)


def path_head_scores(
    model,
    task: Task,
    receivers: Sequence[str] | str = "logits",
    *,
    per_position: bool = False,
    ablation: str = "corrupted",
    receiver_input: str = "z",
    refs: References | None = None,
    max_rows: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Path patching of every head to ``receivers``: Tensor [L, H] or [L, H, pos] (``per_position``).

    Heads that cannot reach any receiver score 0; PatchingInputError when no head can.
    """
    L, H, P = model.cfg.n_layers, model.cfg.n_heads, task.seq_len
    ids = all_components(model, task, per_position=per_position)
    if not isinstance(receivers, str):
        recv = components(model, task, receivers)
        ids = [i for i, c in zip(ids, components(model, task, ids), strict=True) if any(reaches(c, r) for r in recv)]
        if not ids:
            raise PatchingInputError(
                f"no head comes before the receivers {', '.join(receivers)}; senders must precede their receivers"
            )
    scores = torch.zeros(L * H * P if per_position else L * H)
    if ids:
        values = path_patching_scores(
            model, task, ids, receivers, receiver_input=receiver_input, ablation=ablation, refs=refs,
            max_rows=max_rows, progress=progress,
        )
        index = {name: i for i, name in enumerate(all_components(model, task, per_position=per_position))}
        scores[torch.tensor([index[i] for i in ids])] = values
    return scores.reshape(L, H, P) if per_position else scores.reshape(L, H)
