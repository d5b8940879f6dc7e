"""circuit-tracer's side of ``bench/attribution.py``: runs INSIDE circuit-tracer's own virtual environment
(circuit-tracer 0.5.0, transformer-lens < 4, transformers <= 4.57.3); imports nothing of this project.

Loads a local Hugging Face model folder through circuit-tracer's nnsight backend (its TransformerLens backend needs a
hub name), a transcoder set in circuit-tracer's layout (``config.yaml`` + ``layer_<i>.safetensors``, read with its
``load_transcoder_set``, every tensor in memory; a set marked ``activation_function: topk`` gets circuit-tracer's
``TopK(k)`` followed by ReLU, as its loader knows ReLU and JumpReLU only), runs ``attribute`` on the given token ids
and target token ids ``--rounds`` times on the CPU, and writes:

- ``<out>.safetensors``: ``adjacency`` [N, N] ([target, source]; features, then error nodes layer by layer, then
  token nodes, then logits), ``active_features`` [F, 3] (layer, position, feature), ``selected_features`` [F'],
  ``activation_values`` [F], ``logit_targets`` [K], ``logit_probabilities`` [K], ``input_tokens`` [T];
- ``<out>.json`` (also printed as the last line): seconds of each call, the working memory of the first call (peak
  resident memory above the resident size after loading; the kernel's high-water mark reset before it), versions.

With ``--serve`` the timed calls are driven from stdin (one per ``run`` line, each answered with its seconds as a JSON
line), so that the caller can interleave them with its own rounds.

The environment: ``python3 -m venv /work/venvs/circuit-tracer``, the CPU wheel of ``torch==2.13.0`` first, then
``circuit-tracer==0.5.0 'transformer-lens<4' 'transformers<=4.57.3' nnsight==0.6.3`` (nnsight 0.8 lacks the
``nnsight.intervention.tracing`` module circuit-tracer 0.5.0 imports).

Run: ``/work/venvs/circuit-tracer/bin/python bench/circuit_tracer_side.py --model DIR --transcoders DIR
--tokens 1,2,3 --targets 7,8 --out /tmp/ct``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

_MB = 2**20


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / _MB


def _hwm_mb() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


class Peak:
    """Peak resident memory of the block above the resident size at entry (MiB), as bench/memory.py measures it."""

    def __enter__(self) -> Peak:
        gc.collect()
        self.baseline = self.peak = _rss_mb()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        if self.exact:
            self.peak = max(self.peak, _hwm_mb() or 0.0)

    def to_json(self) -> dict:
        return {"baseline_mb": self.baseline, "peak_mb": self.peak, "working_mb": max(0.0, self.peak - self.baseline),
                "exact_peak": self.exact}


def load_set(folder: Path, dtype):
    """circuit-tracer's TranscoderSet from a local folder in its layout (what its hub loader does after download)."""
    import torch
    import yaml
    from circuit_tracer.transcoder.activation_functions import TopK
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    config = yaml.safe_load((folder / "config.yaml").read_text())
    n = len(list(folder.glob("layer_*.safetensors")))
    paths = {i: str(folder / f"layer_{i}.safetensors") for i in range(n)}
    tset = load_transcoder_set(paths, scan=config.get("scan", str(folder)),
                               feature_input_hook=config["feature_input_hook"],
                               feature_output_hook=config["feature_output_hook"], device=torch.device("cpu"),
                               dtype=dtype, lazy_encoder=False, lazy_decoder=False)
    if config.get("activation_function") == "topk":
        k = int(config["k"])

        class TopKReLU(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.topk = TopK(k)

            def forward(self, x):
                return torch.relu(self.topk(x))

        for tc in tset.transcoders:
            tc.activation_function = TopKReLU()
    return tset, config


def compat_folder(src: Path, dst: Path) -> Path:
    """``src`` as transformers 4.57 reads it: a folder written by transformers 5 names its rotary base in
    ``rope_parameters`` (4.57 reads ``rope_theta``, else silently uses 10000) and its tokenizer class
    ``TokenizersBackend`` (unknown to 4.57; ``PreTrainedTokenizerFast`` reads the same tokenizer.json). The weights
    are linked, not copied; a folder already in 4.57's terms is returned as it is."""
    config = json.loads((src / "config.json").read_text())
    tok_path = src / "tokenizer_config.json"
    tok = json.loads(tok_path.read_text()) if tok_path.exists() else {}
    rope = config.get("rope_parameters")
    if not rope and tok.get("tokenizer_class") != "TokenizersBackend":
        return src
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "tokenizer_config.json") and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    if isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    config.pop("rope_parameters", None)
    if tok.get("tokenizer_class") == "TokenizersBackend":
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    (dst / "config.json").write_text(json.dumps(config))
    (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a local Hugging Face model folder")
    parser.add_argument("--transcoders", required=True, help="a transcoder set folder in circuit-tracer's layout")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids (the first one special: BOS)")
    parser.add_argument("--targets", required=True, help="comma-separated target token ids")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-feature-nodes", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="timed calls after the first (measured) one")
    parser.add_argument("--serve", action="store_true", help="after the first call, time one call per 'run' line "
                        "on stdin (answering its seconds), until 'quit' or end of input")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True, help="output prefix: <out>.safetensors and <out>.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    from circuit_tracer import ReplacementModel, attribute
    from safetensors.torch import save_file

    tset, config = load_set(Path(args.transcoders), torch.float32)
    folder = compat_folder(Path(args.model), Path(f"{args.out}-model"))
    model = ReplacementModel.from_pretrained_and_transcoders(str(folder), tset, backend="nnsight",
                                                             device=torch.device("cpu"), dtype=torch.float32)
    tokens = torch.tensor([int(t) for t in args.tokens.split(",")])
    targets = torch.tensor([int(t) for t in args.targets.split(",")])

    def run():
        return attribute(tokens, model, attribution_targets=targets, batch_size=args.batch_size,
                         max_feature_nodes=args.max_feature_nodes, verbose=False)

    with Peak() as peak:
        start = time.perf_counter()
        graph = run()
        first = time.perf_counter() - start
    seconds = []
    if args.serve:  # one timed call per "run" line on stdin, its seconds answered as one JSON line; "quit" ends
        print(json.dumps({"ready": True, "first_seconds": first}), flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
            print(json.dumps({"seconds": seconds[-1]}), flush=True)
    else:
        for _ in range(args.rounds):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
    save_file({"adjacency": graph.adjacency_matrix.float().contiguous(),
               "active_features": graph.active_features.long().contiguous(),
               "selected_features": graph.selected_features.long().contiguous(),
               "activation_values": graph.activation_values.float().contiguous(),
               "logit_targets": torch.tensor([int(t.vocab_idx) for t in graph.logit_targets]),
               "logit_probabilities": graph.logit_probabilities.float().contiguous(),
               "input_tokens": graph.input_tokens.long().contiguous()}, f"{args.out}.safetensors")
    result = {"side": "circuit-tracer", "first_seconds": first, "seconds": seconds, "memory": peak.to_json(), "nodes": int(graph.adjacency_matrix.shape[0]),
              "features": int(graph.selected_features.numel()), "threads": torch.get_num_threads(),
              "backend": "nnsight", "activation_function": config.get("activation_function", "relu"),
              "versions": {name: version(name) for name in ("circuit-tracer", "torch", "transformers",
                                                             "transformer-lens", "nnsight")}}
    Path(f"{args.out}.json").write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
