"""Case study: transcoders against SAEs on the same SmolLM2 layer at matched budgets (the L0 / FVU / CE frontier).

Dunefsky et al. (2024) report transcoders "at least on par" with SAEs on the MLP output for the sparsity-fidelity
trade-off. Here both are trained in ONE pass over SmolLM2 (same tokens, same order, same optimiser settings, same
width): TopK transcoders (``ln2.hook_normalized -> hook_mlp_out``) and TopK SAEs on ``hook_mlp_out`` for each k, then
evaluated on held-out wiki text (spliced next-token loss with the MLP output replaced, CE-loss-recovered against
zero and mean ablation of the MLP output, FVU of the MLP output).

Run: ``flock /tmp/workbench-heavy.lock .venv/bin/python case_studies/dictionaries_frontier.py [--model smollm2-135m]
[--layer 12] [--tokens 131072] [--ks 8 16 32 64] [--eval-tokens 4096]``. Writes one ``dictionary`` run and prints a
markdown table (the spliced rows are paired by k: transcoder minus SAE).
"""

from __future__ import annotations

import argparse

from circuits.dictionaries.analysis import EVAL_DICT, EvalDictionaryConfig, dictionary_result
from circuits.dictionaries.buffer import corpus_source
from circuits.dictionaries.evaluate import evaluate_dictionaries
from circuits.dictionaries.train import DictSpec, TrainDictConfig, train_dictionaries
from workbench.models import load_model
from workbench.store import Store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--tokens", type=int, default=131_072)
    p.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    L = args.layer
    specs = []
    for k in args.ks:
        specs.append(DictSpec(f"blocks.{L}.ln2.hook_normalized", kind="transcoder", hook_out=f"blocks.{L}.hook_mlp_out",
                              activation="topk", k=k, expansion=args.expansion, name=f"transcoder-k{k}"))
        specs.append(DictSpec(f"blocks.{L}.hook_mlp_out", kind="sae", activation="topk", k=k,
                              expansion=args.expansion, name=f"sae-k{k}"))
    cfg = TrainDictConfig(tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, warmup_steps=10,
                          block_batches=16, seed=0)
    model = load_model(args.model, device=args.device)
    source = corpus_source(model.tokenizer, "wiki", seq_len=128, batch_size=8, seed=cfg.seed)
    held = corpus_source(model.tokenizer, "wiki", seq_len=128, batch_size=8, split="heldout", seed=0)
    result = train_dictionaries(model, source, specs, cfg, progress=True, device=args.device)
    evaluation = evaluate_dictionaries(model, result.dictionaries, held, max_tokens=args.eval_tokens, device=args.device)
    stored = dictionary_result(model, result.dictionaries, evaluation, history=result.history, feature_source=held,
                               feature_tokens=2048, tokenizer=model.tokenizer,
                               specs=dict(zip(result.dictionaries, specs, strict=True)), context_size=128)
    info = EVAL_DICT.save(Store(), stored, model, EvalDictionaryConfig(path=["(trained by this case study)"],
                                                                       eval_tokens=args.eval_tokens))
    metrics = Store().load("dictionary", info.run_id).table("metrics")
    print(f"run {info.path}; {result.steps} steps, {result.tokens} tokens, {result.seconds:.0f} s training")
    print("| dictionary | k | L0 | FVU | CE spliced | CE clean | CE recovered (zero) | CE recovered (mean) | KL | dead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, r in metrics.sort_values(["kind", "k"]).iterrows():
        print(f"| {r['label']} | {int(r['k'])} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['ce_spliced']:.4f} | "
              f"{r['ce_clean']:.4f} | {r['ce_recovered_zero']:.3f} | {r['ce_recovered_mean']:.3f} | {r['kl']:.4f} | "
              f"{r['dead_fraction']:.2f} |")
    by = {(r["kind"], int(r["k"])): r for _, r in metrics.iterrows()}
    print("\n| k | FVU transcoder - SAE | CE recovered (zero) transcoder - SAE | KL transcoder - SAE |")
    print("|---|---|---|---|")
    for k in args.ks:
        t, s = by.get(("transcoder", k)), by.get(("sae", k))
        if t is not None and s is not None:
            print(f"| {k} | {t['fvu'] - s['fvu']:+.3f} | {t['ce_recovered_zero'] - s['ce_recovered_zero']:+.3f} | "
                  f"{t['kl'] - s['kl']:+.4f} |")


if __name__ == "__main__":
    main()
