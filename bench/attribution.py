"""Benchmark: a full attribution graph against circuit-tracer's, same model, prompt and transcoders, one run.

Run: ``.venv/bin/python bench/attribution.py [--model smollm2-135m] [--tokens 10] [--k 8] [--rounds 3] [--quick]
[--circuit-tracer-python /work/venvs/circuit-tracer/bin/python]``.

Setup: random TopK-k transcoders (4x) on every layer (timing does not depend on what they learned), the prompt BOS +
the first ``--tokens`` - 1 wiki tokens, the salient logits of our replacement model as the targets of both.
The transcoders are exported in circuit-tracer's layout (:mod:`circuits.dictionaries.circuit_tracer_io`, the norm
weight that our model's weight processing folded away moved into the encoder) and circuit-tracer 0.5.0 runs in its
own virtual environment (``bench/circuit_tracer_side.py``, nnsight backend on the model's local HF folder, every
transcoder tensor in memory), driven from here so that its calls and ours alternate in rounds
(:func:`bench.timing.compare`). Timed modes:

- ``attribute``: the replacement model of the prompt built from the model, then
  :func:`circuits.attribution.attribute.attribute` over every active feature, ``--batch-size`` rows per backward pass;
- ``circuit-tracer``: its ``attribute(tokens, model, attribution_targets=ids, batch_size, max_feature_nodes=None)``
  (its precomputation and forward passes included, as our mode includes building the replacement model).

Conventions, and what is compared: circuit-tracer drops every feature at position 0 and zeroes the error vectors
there (its BOS convention); our feature sets here zero position 0 the same way (so both have the same feature nodes,
and position 0's MLP output goes into its error node, whose edges circuit-tracer sets to zero). Both adjacencies are
[target, source], a source's edge = its activation (or error vector, or token embedding) times the target's
derivative along its write (the activation multiplication included), a feature target's input is its encoder
pre-activation, a logit target's the demeaned unembedding read at the last position. Rows and columns are aligned by
node (features by (layer, position, feature), error nodes by (layer, position), token nodes, logits by token id);
the largest |difference| over every row and every column but position 0's error nodes is reported relative to the
largest |edge| (target 1e-4), with a check that circuit-tracer's position-0 error columns are zero.

Memory: the working memory of one call of each (peak resident memory above the resident size after loading, the
kernel's high-water mark reset before it), each in its own process, before the timing rounds. If circuit-tracer
cannot run (no venv, an exception), the output says exactly why and compares with a plain autograd Jacobian of the
same replacement model instead (``bench/attribution_jacobian.py``). ``--quick``: 6 tokens, k = 4, 2 rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its packages, and bench.timing

from bench.memory import PeakMemory  # noqa: E402
from bench.timing import LoadWatch, Timed, compare, emit, table  # noqa: E402

CT_PYTHON = os.environ.get("CIRCUIT_TRACER_PYTHON", "/work/venvs/circuit-tracer/bin/python")
SIDE = Path(__file__).resolve().with_name("circuit_tracer_side.py")


class CircuitTracer:
    """circuit-tracer's side in its own process: loads, makes one measured call, then one timed call per
    :meth:`call`. Raises RuntimeError with the end of its error output when it fails."""

    def __init__(self, python: str, model_dir: Path, set_dir: Path, tokens: list[int], targets: list[int],
                 batch_size: int, out: Path, threads: int) -> None:
        if not Path(python).exists():
            raise RuntimeError(f"no circuit-tracer environment at {python} (make it: python3 -m venv "
                               "/work/venvs/circuit-tracer, then pip install the CPU wheel of torch==2.13.0, then "
                               "circuit-tracer==0.5.0 'transformer-lens<4' 'transformers<=4.57.3' nnsight==0.6.3 psutil)")
        self.out = out
        self.err = tempfile.TemporaryFile(mode="w+")
        cmd = [python, str(SIDE), "--model", str(model_dir), "--transcoders", str(set_dir), "--tokens",
               ",".join(map(str, tokens)), "--targets", ",".join(map(str, targets)), "--batch-size", str(batch_size),
               "--threads", str(threads), "--out", str(out), "--serve"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env=env, cwd=tempfile.gettempdir())
        self.first = self._answer()

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.proc.wait()
        self.err.seek(0)
        tail = "\n".join(self.err.read().strip().splitlines()[-12:]) or "(no error output)"
        raise RuntimeError(f"circuit-tracer's side exited with {self.proc.returncode}:\n{tail}")

    def call(self) -> Timed:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return Timed(self._answer()["seconds"])

    def finish(self) -> tuple[dict, dict[str, torch.Tensor]]:
        from safetensors.torch import load_file

        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        summary = self._answer()
        self.proc.wait()
        return summary, load_file(f"{self.out}.safetensors")


def zero_first_position(sets):
    """Feature sets whose features never fire at position 0 (circuit-tracer's BOS convention)."""
    for s in sets:
        base = s.encode

        def encode(pre, base=base):
            a = base(pre)
            a[..., 0, :] = 0
            return a

        s.encode = encode
    return sets


def align(graph, ct: dict[str, torch.Tensor], n_layers: int) -> dict:
    """Our graph's adjacency and circuit-tracer's on the same nodes; the largest |difference| relative to max |edge|
    (every row; every column but position 0's error nodes) and checks of the node sets."""
    F, T, K = graph.n_features, len(graph.tokens), len(graph.logit_tokens)
    ct_feats = ct["active_features"][ct["selected_features"]]
    key = {tuple(r): i for i, r in enumerate(ct_feats.tolist())}
    ours_keys = [tuple(r) for r in graph.features.tolist()]
    common = [i for i, k in enumerate(ours_keys) if k in key]
    ct_logits = {int(t): i for i, t in enumerate(ct["logit_targets"].tolist())}
    Fc = int(ct_feats.shape[0])
    ours_idx = torch.tensor(common + list(range(F, F + (n_layers + 1) * T))
                            + [F + (n_layers + 1) * T + i for i, t in enumerate(graph.logit_tokens) if t in ct_logits])
    ct_idx = torch.tensor([key[ours_keys[i]] for i in common] + list(range(Fc, Fc + (n_layers + 1) * T))
                          + [Fc + (n_layers + 1) * T + ct_logits[t] for t in graph.logit_tokens if t in ct_logits])
    A = graph.adjacency.double()[ours_idx][:, ours_idx]
    B = ct["adjacency"].double()[ct_idx][:, ct_idx]
    nf = len(common)
    err0 = torch.tensor([nf + layer * T for layer in range(n_layers)])
    keep = torch.ones(A.shape[1], dtype=torch.bool)
    keep[err0] = False
    scale = float(A[:, keep].abs().max())
    return {"max_edge_diff_rel": float((A - B)[:, keep].abs().max()) / scale, "max_abs_edge": scale,
            "features_ours": F, "features_circuit_tracer": Fc, "features_common": nf,
            "logits_common": int(ours_idx.numel() - nf - (n_layers + 1) * T), "logits": K,
            "ct_position0_error_columns_zero": bool((B[:, err0] == 0).all()),
            "prob_diff_max": float((graph.logit_probabilities.double() - ct["logit_probabilities"].double()[
                [ct_logits[t] for t in graph.logit_tokens if t in ct_logits]]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=None, help="prompt length with BOS (default 10; 6 with --quick)")
    parser.add_argument("--k", type=int, default=None, help="TopK of the random transcoders (default 8; 4 quick)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smallest settings: 6 tokens, k 4, 2 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's)")
    parser.add_argument("--circuit-tracer-python", default=CT_PYTHON)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_tokens = args.tokens or (6 if args.quick else 10)
    k = args.k or (4 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 3)

    from circuits.attribution.attribute import attribute, salient_logits
    from circuits.attribution.replacement import ReplacementModel, feature_sets_from_transcoders
    from circuits.dictionaries.circuit_tracer_io import export_transcoder_set, hf_norm_weights
    from circuits.dictionaries.model import Dictionary
    from circuits.frozen.facts import ModelFacts
    from circuits.frozen.weights import model_weights
    from workbench.data import token_batches
    from workbench.data.tokens import bos_id
    from workbench.models import load_model, resolve

    watch = LoadWatch()
    model = load_model(args.model, device="cpu")
    facts = ModelFacts.of(model)
    d, L = facts.d_model, facts.n_layers
    tcs = {layer: Dictionary.create("transcoder", d, 4 * d, activation="topk", k=k, seed=layer,
                                    hook_in=f"blocks.{layer}.ln2.hook_normalized",
                                    hook_out=f"blocks.{layer}.hook_mlp_out") for layer in range(L)}
    batch = next(iter(token_batches("wiki", model.tokenizer, seq_len=n_tokens, batch_size=1)))
    bos = bos_id(model.tokenizer)
    tokens = torch.cat([torch.tensor([bos if bos is not None else 0]), batch.tokens[0, :n_tokens - 1]])
    model_weights(model, torch.float32, method="attribution graphs")  # cached: part of the loaded baseline

    def replacement():
        return ReplacementModel(model, tokens, zero_first_position(feature_sets_from_transcoders(tcs, facts)))

    targets = salient_logits(replacement())

    def ours():
        return attribute(replacement(), targets, batch_size=args.batch_size)

    with PeakMemory() as peak:
        graph = ours()
    memory = {"attribute": peak.result.to_json()}
    workdir = Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    ct, why = None, None
    try:
        model_dir = resolve(args.model)
        export_transcoder_set(tcs, workdir / "set", scan=f"random-topk{k}", norm_weights=hf_norm_weights(model_dir, L))
        ct = CircuitTracer(args.circuit_tracer_python, model_dir, workdir / "set", tokens.tolist(),
                           list(targets.token_ids), args.batch_size, workdir / "ct", torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001 (any failure of the other library is reported, then the fallback runs)
        why = f"{type(exc).__name__}: {exc}"
    if ct is None:
        print(f"warning: circuit-tracer could not run here: {why}\nfalling back to a plain autograd Jacobian")
        from bench.attribution_jacobian import jacobian_main

        jacobian_main(model, tokens, tcs, facts, targets, args, rounds, watch, why)
        return
    modes = {"attribute": ours, "circuit-tracer": ct.call}
    comparison = compare(modes, rounds=rounds, warmup=0, load=watch)
    summary, ct_graph = ct.finish()
    memory["circuit-tracer"] = summary["memory"]
    check = align(graph, ct_graph, L)
    time_ratio = comparison.ratio("circuit-tracer", "attribute")
    mem_ratio = memory["attribute"]["working_mb"] / max(memory["circuit-tracer"]["working_mb"], 1e-9)
    print(f"{args.model}, {n_tokens} tokens, {graph.n_features} active features, {len(targets.labels)} logits, "
          f"{graph.n_nodes} nodes, torch threads {torch.get_num_threads()}, circuit-tracer "
          f"{summary['versions']['circuit-tracer']} ({summary['backend']} backend)")
    print(table(comparison, "attribute"))
    print(f"circuit-tracer / attribute: {time_ratio:.2f}x the time; our working memory {mem_ratio:.2f}x "
          f"circuit-tracer's ({memory['attribute']['working_mb']:.0f} vs {memory['circuit-tracer']['working_mb']:.0f}"
          f" MiB); largest edge difference {check['max_edge_diff_rel']:.2e} of max |edge| "
          f"({check['features_common']} of {check['features_ours']} / {check['features_circuit_tracer']} features "
          f"matched; its position-0 error columns zero: {check['ct_position0_error_columns_zero']})")
    missed = [m for m, ok in [("edges within 1e-4", check["max_edge_diff_rel"] <= 1e-4),
                              ("at least 2x faster", time_ratio >= 2), ("at most half the memory", mem_ratio <= 0.5)]
              if not ok]
    for m in missed:
        print(f"warning: target missed: {m}")
    emit({"bench": "attribution", "baseline": "circuit-tracer", "model": args.model, "tokens": n_tokens, "topk": k,
          "features": graph.n_features, "logits": len(targets.labels), "nodes": graph.n_nodes,
          "batch_size": args.batch_size, "threads": torch.get_num_threads(),
          "seconds_median": {label: t.median for label, t in comparison.timings.items()},
          "ratio_circuit_tracer_to_attribute": time_ratio,
          "ratio_meaning": "seconds of circuit-tracer / seconds of attribute in the same round, median",
          "memory_ratio_attribute_to_circuit_tracer": mem_ratio, "working_memory_mb": {
              m: v["working_mb"] for m, v in memory.items()}, "memory": memory, **check,
          "targets_missed": missed, "circuit_tracer": {k_: v for k_, v in summary.items() if k_ != "memory"},
          "timing": comparison.to_json(baseline="attribute"), "load": watch.to_json(), "unreliable": watch.unreliable})


if __name__ == "__main__":
    main()
