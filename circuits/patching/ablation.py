"""Reference activations and the batched patched forward every patching method runs on.

The components are attention heads (their ``blocks.L.attn.hook_z`` slice: a head's output is ``z_h @ W_O[h]``, so
replacing ``z_h`` replaces exactly that head's contribution to the residual stream) and MLPs
(``blocks.L.hook_mlp_out``). An *edit* replaces some of them, row by row, with given values.

Ablations (what a replaced component gets):

- ``"mean"``: its mean output over the task's corrupted (reference) prompts, at the same position;
- ``"zero"``: zeros;
- ``"corrupted"``: its output on the same example's corrupted prompt (activation patching from the corrupted run).

Many interventions share one forward pass as batch rows: row ``k * n + b`` is intervention ``k`` on example ``b``
(``n`` examples). Each row carries exactly one intervention; rows never interact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from circuits.frozen.facts import ModelFacts
from workbench.data.task_base import Task

__all__ = [
    "ABLATIONS",
    "PatchingInputError",
    "References",
    "check_ablation",
    "chunks",
    "default_rows",
    "patch_metrics",
    "patched_forward",
    "references",
    "row_metric",
    "rows",
]

ABLATIONS: tuple[str, ...] = ("mean", "zero", "corrupted")


class PatchingInputError(ValueError):
    """A patching request names something the model or task does not have (layer, head, position, node ...)."""


def check_ablation(ablation: str, allowed: tuple[str, ...] = ABLATIONS) -> str:
    """``ablation`` itself, or PatchingInputError listing the accepted ones."""
    if ablation not in allowed:
        raise PatchingInputError(f"unknown ablation {ablation!r}; accepted: {', '.join(allowed)}")
    return ablation


@dataclass
class References:
    """Clean activations and the values ablated components take.

    clean_z / ref_z: [L, n, pos, H, dh] (ref_z has n = 1 for ``mean`` and ``zero``).
    clean_mlp / ref_mlp: [L, n, pos, d_model] (likewise).
    clean_resid: [L, n, pos, d_model], the clean ``hook_resid_pre`` of every layer (to start a forward mid-model).
    clean_metric: the task metric of the clean run (mean over examples).
    """

    clean_z: torch.Tensor
    ref_z: torch.Tensor
    clean_mlp: torch.Tensor
    ref_mlp: torch.Tensor
    clean_resid: torch.Tensor
    clean_metric: float
    ablation: str


def _hook_names(n_layers: int) -> list[str]:
    names = []
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.hook_resid_pre"]
    return names


@torch.no_grad()
def references(model, task: Task, ablation: str = "mean") -> References:
    """Run the clean and corrupted prompts once and keep what patching needs (see :class:`References`).

    The values are the bridge's own hooks (the patched forwards run the bridge, so its references must be its own
    activations, not :func:`circuits.frozen.clean.capture`'s recomputation); the layers come from :class:`ModelFacts`.
    """
    check_ablation(ablation)
    facts = ModelFacts.of(model)
    if not facts.has_mlp:
        raise PatchingInputError("patching covers heads and MLPs: this model is attention-only (no blocks.L.hook_mlp_out)")
    n_layers = facts.n_layers
    names = _hook_names(n_layers)
    device = next(model.parameters()).device
    logits, clean = model.run_with_cache(task.clean_tokens.to(device), names_filter=lambda n: n in names)
    clean_metric = float(task.metric(logits))
    clean_z = torch.stack([clean[f"blocks.{i}.attn.hook_z"] for i in range(n_layers)])
    clean_mlp = torch.stack([clean[f"blocks.{i}.hook_mlp_out"] for i in range(n_layers)])
    clean_resid = torch.stack([clean[f"blocks.{i}.hook_resid_pre"] for i in range(n_layers)])
    del clean, logits
    if ablation == "zero":
        ref_z, ref_mlp = torch.zeros_like(clean_z[:, :1]), torch.zeros_like(clean_mlp[:, :1])
    else:
        _, corr = model.run_with_cache(task.corrupted_tokens.to(device), names_filter=lambda n: n in names)
        ref_z = torch.stack([corr[f"blocks.{i}.attn.hook_z"] for i in range(n_layers)])
        ref_mlp = torch.stack([corr[f"blocks.{i}.hook_mlp_out"] for i in range(n_layers)])
        if ablation == "mean":
            ref_z, ref_mlp = ref_z.mean(1, keepdim=True), ref_mlp.mean(1, keepdim=True)
    return References(clean_z, ref_z, clean_mlp, ref_mlp, clean_resid, clean_metric, ablation)


def default_rows(model, task: Task, budget: float = 1.5e8) -> int:
    """Batch rows per forward so that the logits stay near ``budget`` floats (at most 512 rows)."""
    per_row = task.seq_len * ModelFacts.of(model).d_vocab
    return int(max(task.batch_size, min(512, budget // per_row)))


def chunks(n_items: int, n_examples: int, max_rows: int) -> Iterator[slice]:
    """Slices of interventions such that each forward holds at most ``max_rows`` rows (at least one intervention)."""
    step = max(1, max_rows // max(1, n_examples))
    for start in range(0, n_items, step):
        yield slice(start, min(n_items, start + step))


def rows(values: torch.Tensor, k: int) -> torch.Tensor:
    """Per-example values [n or 1, ...] laid out for k interventions: [k * n, ...] (or left [1, ...] to broadcast)."""
    return values if values.shape[0] == 1 else values.repeat(k, *([1] * (values.ndim - 1)))


Edit = tuple[torch.Tensor, torch.Tensor]  # (mask [R, pos, H] or [R, pos], values [R or 1, pos, H, dh] or [R or 1, pos, d])


def _edit_hook(mask: torch.Tensor, values: torch.Tensor, capture: dict | None, key: str) -> Callable:
    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        if capture is not None:
            capture[key] = act.detach().clone()
        return torch.where(mask.unsqueeze(-1), values.to(act.dtype), act)

    return hook


def _capture_hook(capture: dict, key: str) -> Callable:
    def hook(act: torch.Tensor, hook=None) -> None:
        capture[key] = act.detach().clone()

    return hook


@torch.no_grad()
def patched_forward(
    model,
    refs: References,
    n_rows: int,
    *,
    z_edits: dict[int, Edit] | None = None,
    mlp_edits: dict[int, Edit] | None = None,
    start_layer: int = 0,
    capture: tuple[str, ...] = (),
    tokens: torch.Tensor | None = None,
    hook_edits: dict[str, Edit] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward of ``n_rows`` rows (``n_rows = k * n``, the clean examples repeated k times) with edits.

    z_edits[layer] = (mask [R, pos, H] bool, values [R or 1, pos, H, dh]): where mask is True the head's z takes
    the value. mlp_edits[layer] = (mask [R, pos], values [R or 1, pos, d_model]) likewise for the MLP output.
    hook_edits[name] = (mask, values) edits any hook whose activation ends in a head axis ([R, pos, heads, dh]:
    ``hook_q``, ``hook_k``, ``hook_v``). start_layer > 0 starts from the clean ``hook_resid_pre`` of that layer (edits below it must be empty).
    capture: hook names whose activations (computed, before any edit) are returned. tokens: the clean tokens
    [n, seq], needed when start_layer is 0.
    Returns (logits [R, pos, vocab], captured {hook name: Tensor}).
    """
    n = refs.clean_resid.shape[1]
    k = n_rows // n
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    wanted = set(capture)
    for layer, (mask, values) in (z_edits or {}).items():
        name = f"blocks.{layer}.attn.hook_z"
        hooks.append((name, _edit_hook(mask, values, captured if name in wanted else None, name)))
        wanted.discard(name)
    for layer, (mask, values) in (mlp_edits or {}).items():
        name = f"blocks.{layer}.hook_mlp_out"
        hooks.append((name, _edit_hook(mask, values, captured if name in wanted else None, name)))
        wanted.discard(name)
    for name, (mask, values) in (hook_edits or {}).items():
        hooks.append((name, _edit_hook(mask, values, captured if name in wanted else None, name)))
        wanted.discard(name)
    hooks += [(name, _capture_hook(captured, name)) for name in sorted(wanted)]
    with model.hooks(fwd_hooks=hooks):
        if start_layer > 0:
            logits = model(rows(refs.clean_resid[start_layer], k), start_at_layer=start_layer)
        else:
            if tokens is None:
                raise PatchingInputError("patched_forward from layer 0 needs the clean tokens [n, seq] (tokens=)")
            logits = model(rows(tokens.to(refs.clean_resid.device), k))
    return logits, captured


def row_metric(task: Task, logits: torch.Tensor, k: int) -> torch.Tensor:
    """The task metric of each of k interventions: logits [k * n, pos, vocab] -> Tensor [k] (mean over examples)."""
    n = task.batch_size
    big = task if k == 1 else task.select(list(range(n)) * k)
    return big.metric_per_example(logits).reshape(k, n).mean(1)


@torch.no_grad()
def patch_metrics(
    model,
    task: Task,
    refs: References,
    heads: torch.Tensor,
    mlps: torch.Tensor,
    *,
    max_rows: int | None = None,
    progress: bool = False,
    desc: str = "patching",
) -> torch.Tensor:
    """The metric of K interventions: heads [K, L, pos, H] and mlps [K, L, pos] bool masks -> Tensor [K].

    Intervention k replaces the head outputs and MLP outputs its masks mark with their reference values
    (``refs.ablation``). Interventions share forwards as batch rows (``max_rows`` rows per forward); each forward
    starts from the clean residual stream of the first layer any of its interventions touches.
    """
    n = task.batch_size
    max_rows = max_rows or default_rows(model, task)
    device = refs.clean_z.device
    touched_z = heads.flatten(2).any(-1)  # [K, L]
    touched_m = mlps.any(-1)  # [K, L]
    out = []
    for sl in tqdm(list(chunks(heads.shape[0], n, max_rows)), desc=desc, disable=not progress):
        k = sl.stop - sl.start
        z_edits, mlp_edits = {}, {}
        layers_z = touched_z[sl].any(0).nonzero().flatten().tolist()
        layers_m = touched_m[sl].any(0).nonzero().flatten().tolist()
        for layer in layers_z:
            z_edits[layer] = (heads[sl, layer].to(device).repeat_interleave(n, 0), rows(refs.ref_z[layer], k))
        for layer in layers_m:
            mlp_edits[layer] = (mlps[sl, layer].to(device).repeat_interleave(n, 0), rows(refs.ref_mlp[layer], k))
        start = min(layers_z + layers_m, default=0)
        logits, _ = patched_forward(
            model, refs, k * n, z_edits=z_edits, mlp_edits=mlp_edits, start_layer=start, tokens=task.clean_tokens
        )
        out.append(row_metric(task, logits, k).cpu())
        del logits
    return torch.cat(out) if out else torch.zeros(0)
