"""Case study: the zoo's checkpoint families: what each member is, how long it took, its final held-out loss.

For every built member of the ``llama`` and ``gpt`` families: stores its training curves as a ``zoo-training`` run,
reads its size, checkpoints, build time and final train / held-out loss, checks that held-out loss falls with size
within each family, and writes ``zoo.md`` next to this script. Members that are not built are listed as such
(``--build`` trains them first, which takes tens of minutes on two CPU cores).

Run: ``WORKBENCH_HOME=... .venv/bin/python case_studies/zoo.py [--build]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from workbench import zoo
from workbench.store import Store
from workbench.zoo import split_loss
from workbench.zoo_curves import store_training_run
from workbench.zoo_families import FAMILIES, MEMBERS

GPU_NOTE = """## Rebuilding larger members on a GPU

No GPU was available for these builds; every member above was trained on the CPU, one torch thread. A larger member
is a new entry in `MEMBERS` of `workbench/zoo_families.py` (for example `_member("llama", 256, 8, "silu", 4000)`);
on a machine with CUDA, `WORKBENCH_ZOO_DEVICE=cuda` makes the same code train there:

```bash
export WORKBENCH_HOME=/path/to/cache
WORKBENCH_ZOO_DEVICE=cuda workbench zoo build llama   # every member of the family, resuming interrupted builds
```

GPU kernels are not bit-for-bit reproducible across devices or
library versions, so a GPU-built member is deterministic only on the same GPU model and software (set
`torch.use_deterministic_algorithms(True)` and `CUBLAS_WORKSPACE_CONFIG=:4096:8`); copy its folder
`$WORKBENCH_HOME/zoo/<member>/` (with `manifest.json`) into another cache to use it there.
"""


def cpu_seconds_per_step(name: str, steps: int = 5) -> float:
    """CPU seconds of one training update of member ``name`` (one thread, fresh model, after one warm-up update)."""
    import time

    import torch

    from workbench.zoo_families import make_model
    from workbench.zoo_tokenizer import load_text_tokenizer, token_streams, windows

    cfg = MEMBERS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = load_text_tokenizer(cfg.text)
        model = make_model(cfg, tok.bos_token_id, tok.pad_token_id).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(0)
        for i in range(steps + 1):
            if i == 1:
                start = time.process_time()
            batch = windows(token_streams(cfg.text)["train"], cfg.batch, cfg.context, gen, tok.bos_token_id)
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad()
        return (time.process_time() - start) / steps
    finally:
        torch.set_num_threads(threads)


def member_rows(store: Store, build: bool) -> pd.DataFrame:
    rows = []
    for family in FAMILIES:
        for name in zoo.families()[family]:
            cfg = MEMBERS[name]
            if build:
                zoo.build(name)
            row = {"family": family, "member": name, "d_model": cfg.d_model, "layers": cfg.n_layers,
                   "heads": cfg.n_heads, "d_mlp": cfg.d_mlp, "activation": cfg.activation,
                   "parameters": cfg.n_parameters(), "built": zoo.is_built(name)}
            if row["built"]:
                info = zoo.manifest(name)
                store_training_run(name, store)
                root = zoo.folder(name) / "checkpoints"
                ckpts = sorted(root.iterdir())
                row.update(steps=cfg.steps, checkpoints=len(info["steps"]),
                           wall_seconds=round(ckpts[-1].stat().st_mtime - ckpts[0].stat().st_mtime),
                           train_loss=info["final_eval"]["train_loss"], heldout_loss=info["final_eval"]["heldout_loss"],
                           heldout_loss_256=split_loss(name, n_windows=256))
                row["cpu_s_per_step"] = cpu_seconds_per_step(name)
                row["cpu_minutes_est"] = row["cpu_s_per_step"] * cfg.steps * 1.1 / 60  # + checkpoint evaluations and saves
            rows.append(row)
    return pd.DataFrame(rows)


def size_check(table: pd.DataFrame) -> list[str]:
    """Per family: whether held-out loss falls as parameters grow (the built members, sorted by size)."""
    lines = []
    for (family, act), group in table[table["built"]].groupby(["family", "activation"], sort=False):
        group = group.sort_values("parameters")
        if len(group) < 2:
            continue
        losses = group["heldout_loss_256"].tolist()
        falls = all(b < a for a, b in zip(losses, losses[1:], strict=False))
        rho = group["parameters"].rank().corr(group["heldout_loss_256"].rank())
        lines.append(f"- `{family}` ({act}; {', '.join(group['member'])}): held-out loss by size {', '.join(f'{x:.3f}' for x in losses)}: "
                     f"{'falls at every step up in size' if falls else 'does not fall at every step up in size'} "
                     f"(Spearman rank correlation of size and loss {rho:.2f}).")
    return lines


def budget_note(table: pd.DataFrame) -> list[str]:
    """What the step budgets mean: tokens seen, and the whole zoo's cost in CPU-minutes."""
    built = table[table["built"]]
    if built.empty:
        return []
    base = int(built["steps"].min())
    longer = built[built["steps"] > base]
    extra = "" if longer.empty else (
        f"; the members above one million parameters ({', '.join(longer['member'])}) make "
        f"{int(longer['steps'].max())}, because a larger model needs more updates to use its size (at {base} updates "
        "the 4-layer, 128-wide GPT-style member only tied the 2-layer one)")
    cost = float(built["cpu_minutes_est"].sum())
    return [f"Members make {base} updates of 8 x 127 tokens (about {base * 8 * 127 / 1e6:.1f} M tokens, about half a "
            f"pass over the training stream){extra}. The whole zoo costs about {cost:.0f} CPU-minutes "
            "(`cpu_minutes_est`, one thread per member; two members build at once on two cores). At 400 updates the "
            "deeper and wider members had not yet overtaken the small ones and held-out loss did not fall with size. "
            "Step counts live in `MEMBERS` of `workbench/zoo_families.py`; a member built under another configuration "
            "is rebuilt from scratch on next use."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="train members that are not built")
    args = parser.parse_args()
    store = Store()
    table = member_rows(store, args.build)
    shown = table.drop(columns=["built"]).copy()
    md = [
        "# The zoo's checkpoint families",
        "",
        "Two families of small language models trained by the workbench on the bundled text (Wikipedia articles, "
        "Lee news corpus and Shakespeare, training split of `workbench.data`; held-out loss on the held-out split), "
        "with one shared byte-level BPE tokenizer (vocabulary 2048) trained once with `tokenizers`. Context 128 "
        "(a BOS token then 127 tokens of the stream), batch 8, AdamW (lr 3e-3, warm-up 50 steps, cosine to 10%), "
        "weight decay 0.01, seed 0, one torch thread. Checkpoints are log-spaced, step 0 included.",
        "",
        *(f"- `{f}`: {d}." for f, d in FAMILIES.items()),
        "",
        "Load any checkpoint as `load_model(\"toy/<member>@<step>\")`; `workbench models` lists their sizes and steps.",
        "",
        "```",
        shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"),
        "```",
        "",
        "`wall_seconds`: from the step-0 checkpoint to the last one, on a shared two-core machine with the build "
        "niced behind other work (several times its CPU time). `cpu_s_per_step`: CPU seconds of one update measured "
        "alone on one thread; `cpu_minutes_est`: that times the steps, plus 10% for the checkpoint evaluations and saves. "
        "`train_loss` / `heldout_loss`: at the last checkpoint on the 16 fixed evaluation windows of each split "
        "kept in the training curves; `heldout_loss_256`: on 256 held-out windows (a tighter estimate).",
        "",
        "## Held-out loss against size",
        "",
        *size_check(table),
        "",
        *budget_note(table),
        "",
        GPU_NOTE,
    ]
    out = Path(__file__).with_suffix(".md")
    out.write_text("\n".join(md) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
