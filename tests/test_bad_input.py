"""Bad input on the command line: every case exits with status 2, prints no traceback, and names the option or file.

Each case is ``(argv, fragments)``: ``argv`` may hold ``{gpt}``/``{llama}`` (the tiny models' folders), ``{dict}``
(a good SAE folder of the tiny GPT-2), ``{tc0}``/``{tc1}`` (its transcoders), ``{bad:NAME}`` (a corrupt dictionary
folder), ``{model:NAME}`` (a corrupt model folder) and ``{file}`` (a plain file); every fragment must appear in
the error output (case-insensitive). ``{...}`` fragments are filled the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from pathlib import Path

import pytest

from workbench.ui.cli import main

# the bytes of pickle.dumps({"W_enc": [1.0, 2.0]}, protocol=4), written out so that no test imports pickle: what a
# pickled weights file starts with, for the refusal checks (nothing ever unpickles it)
PICKLED = b'\x80\x04\x95"\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05W_enc\x94]\x94(G?\xf0\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00es.'

LONG = " ".join(f"t{i % 60}" for i in range(100))  # 100 tokens of the tiny models' word-level vocabulary (context 64)
HUGE = "t1 " * 40_000  # a 120k-character prompt
NAN, INF = "nan", "inf"
GPT = ["--model", "{gpt}", "--device", "cpu"]
LLAMA = ["--model", "{llama}", "--device", "cpu"]

MODEL_VERBS = {  # verb -> the smallest valid arguments besides the model
    "sparsity": ["--tokens", "256", "--seq-len", "32", "--batch-size", "2"],
    "massive": ["--tokens", "256", "--seq-len", "32", "--batch-size", "2", "--no-intervention"],
    "probe": ["--corpus", "reviews", "--n", "20", "--folds", "2", "--max-text-tokens", "16"],
    "train-dict": ["--layer", "0", "--seq-len", "32", "--tokens", "512", "--batch-size", "64", "--eval-tokens", "64"],
    "eval-dict": ["{dict}", "--seq-len", "32", "--eval-tokens", "64"],
    "tc-circuit": ["--task", "induction", "--n", "2", "--transcoder", "{tc0}", "{tc1}"],
    "cdt": ["--task", "induction", "--half-len", "6", "--n", "2"],
    "patch": ["--task", "induction", "--half-len", "6", "--n", "2"],
    "paths": ["--task", "induction", "--n", "2", "--lesion-draws", "0"],
    "edges": ["--task", "induction", "--half-len", "4", "--n", "2"],
    "attribute": ["--prompt", "t3 t5 t7 t3", "--transcoder", "{tc0}", "{tc1}"],
    "intervene": ["--prompt", "t3 t5 t7 t3", "--transcoder", "{tc0}", "{tc1}", "--sample", "2"],
    "vit": ["--n", "16"],
    "train-clt": ["--seq-len", "32", "--tokens", "512", "--batch-size", "64", "--eval-tokens", "64", "--k", "4"],
    "bigram": ["--corpus", "news", "--steps", "2", "--bigram-tokens", "512", "--seq-len", "16", "--eval-tokens", "64"],
}

CASES: list[tuple[str, list[str], list[str]]] = []


def case(kind: str, argv: list[str], *fragments: str) -> None:
    CASES.append((kind, argv, list(fragments)))


# --- every model verb: the model and the device -------------------------------------------------------------------
for verb, base in MODEL_VERBS.items():
    case("device", [verb, *base, "--model", "{gpt}", "--device", "cuda"], "--device", "cuda")
    case("device", [verb, *base, "--model", "{gpt}", "--device", "tpu9"], "--device", "tpu9")
    case("unknown-model", [verb, *base, "--model", "no-such-model", "--device", "cpu"], "no-such-model")
    case("hub-offline", [verb, *base, "--model", "nobody/no-such-model", "--device", "cpu"], "nobody/no-such-model",
         "offline")
    case("argparse", [verb, *base, *GPT, "--no-such-option", "1"], "--no-such-option")

# --- corrupt model folders (each names the file) --------------------------------------------------------------------
for name, file in [("config-truncated", "config.json"), ("config-empty", "config.json"),
                   ("config-list", "config.json"), ("config-no-type", "config.json"),
                   ("weights-truncated", "model.safetensors"), ("weights-empty", "model.safetensors"),
                   ("weights-header-bomb", "model.safetensors"), ("weights-pickled", "model.safetensors"),
                   ("weights-torch-save", "model.safetensors"), ("bin-pickled", "pytorch_model.bin"),
                   ("no-weights", "weights")]:
    verb = ["sparsity", "massive", "paths", "cdt", "patch"][len(CASES) % 5]
    case("corrupt-model", [verb, *MODEL_VERBS[verb], "--model", f"{{model:{name}}}", "--device", "cpu"], file)

# --- NaN / Inf options ----------------------------------------------------------------------------------------------
for verb, flag in [("sparsity", "--max-rise"), ("sparsity", "--taus"), ("massive", "--abs-threshold"),
                   ("massive", "--ratio-threshold"), ("train-dict", "--l1"), ("train-dict", "--lr"),
                   ("train-dict", "--expansion"), ("train-dict", "--checkpoint-seconds"),
                   ("cdt", "--faithfulness-bound"), ("cdt", "--norm-eps"), ("patch", "--faithfulness-bound")]:
    for value in (NAN, INF):
        case("non-finite", [verb, *MODEL_VERBS[verb], *GPT, flag, value], flag, "finite")
    case("non-finite", [verb, *MODEL_VERBS[verb], *GPT, f"{flag}=-inf"], flag)

# --- zero, negative and huge counts and rates -----------------------------------------------------------------------
COUNTS = [
    ("sparsity", "--tokens", "0"), ("sparsity", "--tokens", "-5"), ("sparsity", "--seq-len", "1"),
    ("sparsity", "--batch-size", "0"), ("sparsity", "--eval-tokens", "0"), ("sparsity", "--max-rise", "-1"),
    ("sparsity", "--taus", "-0.5"), ("sparsity", "--calib-tokens", "0"), ("sparsity", "--topk", "0"),
    ("sparsity", "--layers", "-1"), ("sparsity", "--threshold-layers", "-2"),
    ("massive", "--tokens", "0"), ("massive", "--abs-threshold", "0"), ("massive", "--ratio-threshold", "-3"),
    ("massive", "--intervention-layers", "-1"), ("massive", "--batch-size", "-1"),
    ("probe", "--n", "0"), ("probe", "--n", "-4"), ("probe", "--folds", "1"), ("probe", "--max-text-tokens", "0"),
    ("probe", "--seed", "-1"),
    ("train-dict", "--tokens", "0"), ("train-dict", "--batch-size", "0"), ("train-dict", "--lr", "0"),
    ("train-dict", "--l1", "-1"), ("train-dict", "--k", "0"), ("train-dict", "--expansion", "0"),
    ("train-dict", "--warmup", "-1"), ("train-dict", "--checkpoint-every", "0"), ("train-dict", "--layer", "-1"),
    ("train-dict", "--eval-tokens", "0"), ("train-dict", "--seq-len", "0"),
    ("eval-dict", "--eval-tokens", "-1"), ("eval-dict", "--seq-len", "1"),
    ("tc-circuit", "--beam-width", "0"), ("tc-circuit", "--depth", "0"), ("tc-circuit", "--example", "-1"),
    ("tc-circuit", "--n", "0"), ("tc-circuit", "--train-tokens", "-1"),
    ("cdt", "--top-k", "-3"), ("cdt", "--top-k", "0"), ("cdt", "--n", "0"), ("cdt", "--half-len", "1"),
    ("cdt", "--faithfulness-bound", "0"), ("cdt", "--faithfulness-bound", "1.5"), ("cdt", "--seed", "-1"),
    ("patch", "--top-k", "-3"), ("patch", "--max-rounds", "0"), ("patch", "--n", "-2"),
    ("patch", "--faithfulness-bound", "2"),
    ("paths", "--n", "0"), ("paths", "--beam", "0"), ("paths", "--top", "-1"), ("paths", "--search-length", "0"),
    ("paths", "--max-length", "0"), ("paths", "--lesion-draws", "-1"), ("paths", "--lesion-draws", "1000000000"),
    ("paths", "--lesion-step", "0"),
    ("train-dict", "--expansion", "1e9"), ("cdt", "--n", "1000000000"), ("patch", "--n", "1000000000"),
    ("paths", "--n", "1000000000"), ("tc-circuit", "--n", "1000000000"),
    ("tc-circuit", "--example", "1000000000"),
]
for verb, flag, value in COUNTS:
    case("count", [verb, *MODEL_VERBS[verb], *GPT, flag, value], flag)
for verb, flag, value in [("cdt", "--top-k", "abc"), ("patch", "--n", "1.5"), ("sparsity", "--tokens", "1e3"),
                          ("paths", "--beam", "x"), ("train-dict", "--k", "2,x"), ("cdt", "--ablation", "half"),
                          ("patch", "--mode", "everything"), ("probe", "--pool", "max")]:
    case("argparse", [verb, *MODEL_VERBS[verb], *GPT, flag, value], flag)

# --- the edge methods and the discovery benchmark ------------------------------------------------------------------
for flag, value in [("--steps", "0"), ("--threshold", "-0.5"), ("--top-k", "0"), ("--n", "0")]:
    case("count", ["edges", *MODEL_VERBS["edges"], *GPT, flag, value], flag)
case("argparse", ["edges", *MODEL_VERBS["edges"], *GPT, "--method", "acdc2"], "--method")
case("options", ["benchmark", "--methods", "eap", "magic"], "--methods", "magic")
case("options", ["benchmark", "--models", "gt-nothing"], "--models", "gt-nothing")
case("count", ["benchmark", "--threshold", "-1"], "--threshold")
case("count", ["benchmark", "--steps", "0"], "--steps")

# --- vision transformers -------------------------------------------------------------------------------------------
for flag, value in [("--n", "0"), ("--prune", "-1"), ("--scale-steps", "0"), ("--examples", "65"), ("--taus", "-1")]:
    case("count", ["vit", *GPT, flag, value], flag)
case("argparse", ["vit", *GPT, "--split", "validation"], "--split")
case("options", ["vit", *MODEL_VERBS["vit"], *GPT], "vision transformer", "language model")
# --- bigram subnetworks --------------------------------------------------------------------------------------------
for flag, value in [("--budget", "0"), ("--budget", "1.5"), ("--budget", "-0.2"), ("--steps", "0"), ("--lr", "0"),
                    ("--smoothing", "0"), ("--min-count", "0"), ("--beta-final", "0.5"), ("--control-draws", "0")]:
    case("count", ["bigram", *MODEL_VERBS["bigram"], *GPT, flag, value], flag)
case("non-finite", ["bigram", *MODEL_VERBS["bigram"], *GPT, "--budget", NAN], "--budget", "finite")
case("corpus-size", ["bigram", *MODEL_VERBS["bigram"], *GPT, "--eval-tokens", "10000000000000"], "--eval-tokens",
     "corpus")
case("file-as-folder", ["bigram", *MODEL_VERBS["bigram"], *GPT, "--workdir", "{file}"], "--workdir")

# --- attribution graphs ---------------------------------------------------------------------------------------------
for flag, value in [("--node-threshold", "1.5"), ("--edge-threshold", "-0.1"), ("--batch-size", "0"),
                    ("--max-n-logits", "0"), ("--desired-logit-prob", "0"), ("--max-feature-nodes", "-1")]:
    case("count", ["attribute", *MODEL_VERBS["attribute"], *GPT, flag, value], flag)
case("argparse", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--precision", "float16"], "--precision")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--target", "tc0.f99999@1"], "--target")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--correct", "t5 t6"], "--correct")
case("options", ["train-clt", *MODEL_VERBS["train-clt"], *GPT, "--k", "100000"], "--k", "100000")
case("options", ["train-clt", *MODEL_VERBS["train-clt"], *GPT, "--activation", "gelu"], "--activation")
for name, fragments in {"clt:yaml": ("config.yaml", "invalid yaml"), "clt:hook": ("hook_resid_post", "accepted"),
                        "clt:tensor": ("w_enc_1.safetensors", "b_dec_1"), "clt:other": ("3 layers", "2 layers"),
                        "clt:shape": ("w_dec_0", "shape")}.items():
    case("clt-folder", ["attribute", "--prompt", "t3 t5 t7 t3", "--transcoder", "{" + name + "}", *GPT], *fragments)
case("long-prompt", ["attribute", *GPT, "--prompt", LONG, "--transcoder", "{tc0}", "{tc1}"], "--prompt")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--attention-head", "1-0"], "--attention-head")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--attention-head", "1.9"], "--attention-head", "head 9")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--attention-head", "1.0", "--query-pos", "9"],
     "--query-pos")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--attention-head", "1.0", "--query-pos", "2",
                 "--key-pos", "3"], "--key-pos")
case("options", ["attribute", *MODEL_VERBS["attribute"], *GPT, "--key-pos", "1"], "--attention-head")
IV = ["intervene", *MODEL_VERBS["intervene"], *GPT]
case("options", [*IV, "--zero", "tc1.f3@@2"], "--zero", "malformed")
case("options", [*IV, "--set", "tc1.f3@2=x"], "--set", "not a number")
case("options", [*IV, "--scale", "L1.H0@2=2"], "--scale", "not a feature")
case("options", [*IV, "--zero", "tc1.f9999@2"], "--zero", "out of range")
case("options", [*IV, "--zero", "tc1.f3@40"], "--zero", "outside the prompt")
case("options", ["intervene", *GPT, "--prompt", "t3 t5", "--transcoder", "{tc0}", "--zero", "tc1.f3@1"], "--zero",
     "layer 1 has no transcoder")
case("options", [*IV, "--set", "tc1.f3@2"], "--set", "needs a value")
case("count", [*IV, "--sample", "-1"], "--sample")
case("long-prompt", ["intervene", *GPT, "--prompt", LONG, "--transcoder", "{tc0}", "{tc1}"], "--prompt")

# --- budgets larger than the corpus, sizes that cannot fit ---------------------------------------------------------
case("corpus-size", ["sparsity", *GPT, "--tokens", "10000000000000", "--seq-len", "32"], "--tokens", "corpus")
case("corpus-size", ["massive", *GPT, "--tokens", "10000000000000", "--seq-len", "32"], "--tokens", "corpus")
case("corpus-size", ["sparsity", *MODEL_VERBS["sparsity"], *GPT, "--eval-tokens", "10000000000000", "--topk", "4"],
     "--eval-tokens", "corpus")
case("corpus-size", ["sparsity", *MODEL_VERBS["sparsity"], *GPT, "--calib-tokens", "10000000000000", "--thresholds"],
     "--calib-tokens", "corpus")
case("corpus-size", ["probe", *GPT, "--n", "1000000"], "--n", "corpus")
case("corpus-size", ["probe", *GPT, "--n", "100000"], "--n", "corpus")
case("corpus-size", ["probe", *GPT, "--corpus", "reviews", "--n", "500"], "--n", "corpus")
case("corpus-size", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--tokens", "10000000000000",
                     "--batch-size", "64"], "--tokens", "corpus")
case("corpus-size", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--eval-tokens", "10000000000000"],
     "--eval-tokens", "corpus")
case("corpus-size", ["eval-dict", *MODEL_VERBS["eval-dict"], *GPT, "--eval-tokens", "10000000000000"],
     "--eval-tokens", "corpus")
case("corpus-size", ["massive", *MODEL_VERBS["massive"], *GPT, "--intervention", "--eval-tokens", "10000000000000"],
     "--eval-tokens", "corpus")
case("memory", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--expansion", "1000", "--l1",
                *[f"{1e-3 + i * 1e-7:.7f}" for i in range(10_000)]], "memory", "gib")
case("memory", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--batch-size", "100000000"], "--batch-size")
case("memory", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--tokens", "100", "--batch-size", "4096"],
     "--batch-size", "--tokens")
case("memory", ["sparsity", *GPT, "--tokens", "1000000", "--batch-size", "100000000"], "--batch-size")

# --- unknown corpus -------------------------------------------------------------------------------------------------
for verb in ("sparsity", "massive", "probe", "train-dict", "eval-dict"):
    case("unknown-corpus", [verb, *MODEL_VERBS[verb], *GPT, "--corpus", "no-such-corpus"], "--corpus",
         "no-such-corpus")
case("unknown-corpus", ["probe", *MODEL_VERBS["probe"], *GPT, "--corpus", "wiki"], "--corpus", "labelled")

# --- over-context prompts and --seq-len (each names the model's context length) -----------------------------------
for verb, argv in [
    ("sparsity", ["--seq-len", "100", "--tokens", "1000", "--batch-size", "2"]),
    ("massive", ["--seq-len", "100", "--tokens", "1000", "--batch-size", "2", "--no-intervention"]),
    ("train-dict", ["--layer", "0", "--seq-len", "128", "--tokens", "512", "--batch-size", "64"]),
    ("eval-dict", ["{dict}", "--seq-len", "200"]),
    ("tc-circuit", ["--prompt", LONG, "--transcoder", "{tc0}", "{tc1}"]),
    ("tc-circuit", ["--prompt", HUGE, "--transcoder", "{tc0}", "{tc1}"]),
    ("cdt", ["--task", "induction", "--half-len", "40", "--n", "2"]),
    ("cdt", ["--task", "induction", "--half-len", "6", "--n", "2", "--explain", LONG]),
    ("patch", ["--task", "induction", "--half-len", "40", "--n", "2"]),
    ("patch", ["--prompt", LONG, "--corrupted", LONG, "--correct", "t1", "--incorrect", "t2"]),
    ("paths", ["--prompt", LONG]),
    ("paths", ["--prompt", HUGE]),
    ("probe", ["--corpus", "reviews", "--n", "20", "--folds", "2", "--max-text-tokens", "100"]),
]:
    for model in (GPT, LLAMA):
        case("context", [verb, *argv, *model], "context", "64")

# --- empty prompts, same answers, tasks and options that do not go together ----------------------------------------
for prompt in ("", "   ", "\n"):
    case("empty-prompt", ["tc-circuit", *GPT, "--prompt", prompt, "--transcoder", "{tc0}", "{tc1}"], "--prompt")
    case("empty-prompt", ["paths", *GPT, "--prompt", prompt], "--prompt")
    case("empty-prompt", ["patch", *GPT, "--prompt", prompt, "--corrupted", "t1", "--correct", "t1",
                          "--incorrect", "t2"], "--prompt")
    case("empty-prompt", ["cdt", *MODEL_VERBS["cdt"], *GPT, "--explain", prompt], "--explain")
case("same-answer", ["tc-circuit", *MODEL_VERBS["tc-circuit"], *GPT, "--correct", "t5", "--incorrect", "t5"],
     "--correct", "--incorrect")
case("same-answer", ["patch", *GPT, "--prompt", "t1 t2 t3", "--corrupted", "t4 t2 t3", "--correct", "t5",
                     "--incorrect", "t5"], "--correct", "--incorrect")
case("same-answer", ["tc-circuit", *MODEL_VERBS["tc-circuit"], *GPT, "--correct", "t5 t6"], "--correct")
case("same-answer", ["patch", *GPT, "--prompt", "t1 t2 t3", "--corrupted", "t4 t2", "--correct", "t5",
                     "--incorrect", "t6"], "--corrupted")
case("options", ["patch", *GPT, "--prompt", "t1 t2 t3"], "--corrupted")
case("options", ["patch", *GPT, "--correct", "t1"], "--prompt")
case("options", ["tc-circuit", *GPT, "--transcoder", "{tc0}", "{tc1}"], "--prompt", "--task")
case("options", ["tc-circuit", *GPT, "--prompt", "t1 t2"], "--transcoder")
case("options", ["tc-circuit", *MODEL_VERBS["tc-circuit"], *GPT, "--position", "99"], "--position")
case("options", ["tc-circuit", *MODEL_VERBS["tc-circuit"], *GPT, "--target", "banana"], "--target")
case("options", ["tc-circuit", *MODEL_VERBS["tc-circuit"], *GPT, "--target", "tc9.f1@2"], "--target")
case("options", ["tc-circuit", *GPT, "--task", "induction", "--example", "20", "--n", "4",
                 "--transcoder", "{tc0}", "{tc1}"], "--example")
case("options", ["tc-circuit", *GPT, "--prompt", "t1 t2", "--transcoder", "{dict}", "{tc1}"], "{dict}")
case("options", ["paths", *GPT], "--prompt", "--task")
case("options", ["paths", *GPT, "--prompt", "t1", "--task", "ioi"], "--prompt", "--task")
case("options", ["train-dict", *GPT], "--hook", "--layer")
case("options", ["train-dict", *GPT, "--layer", "0", "--hook", "blocks.0.hook_resid_post"], "--hook", "--layer")
case("options", ["train-dict", *GPT, "--layer", "0", "--activation", "topk"], "--k")
case("options", ["train-dict", *GPT, "--hook", "blocks.0.hook_resid_post", "--kind", "transcoder"], "--hook-out")
case("options", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--layer", "7"], "--layer", "0..1")
case("options", ["train-dict", *GPT, "--hook", "blocks.0.hook_nowhere", "--seq-len", "32", "--tokens", "512",
                 "--batch-size", "64"], "blocks.0.hook_nowhere")
case("options", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--activation", "topk", "--k", "100000"], "--k")
case("options", ["sparsity", *MODEL_VERBS["sparsity"], *GPT, "--layers", "9"], "--layers")
case("options", ["massive", *MODEL_VERBS["massive"], *GPT, "--layers", "5"], "--layers")
case("options", ["massive", *MODEL_VERBS["massive"], *GPT, "--intervention", "--intervention-layers", "5"],
     "--intervention-layers")
case("options", ["sparsity", *MODEL_VERBS["sparsity"], *GPT, "--thresholds", "--threshold-layers", "7"],
     "--threshold-layers")
case("options", ["probe", *GPT, "--corpus", "reviews", "--n", "20", "--folds", "12"], "--folds")
case("options", ["cdt", *MODEL_VERBS["cdt"], *GPT, "--sources", "L9.H0"], "--sources")
case("options", ["cdt", *MODEL_VERBS["cdt"], *GPT, "--targets", "banana"], "--targets")
case("options", ["patch", *MODEL_VERBS["patch"], *GPT, "--mode", "path", "--receivers", "L9.H0"], "--receivers")
case("options", ["cdt", *MODEL_VERBS["cdt"], *GPT, "--task", "ioi"], "--half-len")
case("options", ["patch", *MODEL_VERBS["patch"], *GPT, "--task", "greater-than"], "--half-len")
case("options", ["cdt", *GPT, "--task", "nope"], "--task")

# --- dictionary folders: corrupt, repeated, missing ----------------------------------------------------------------
BAD_DICTS = {"weights-truncated": "sae_weights.safetensors", "weights-empty": "sae_weights.safetensors",
             "weights-header-bomb": "sae_weights.safetensors", "weights-pickled": "sae_weights.safetensors",
             "weights-torch-save": "sae_weights.safetensors", "weights-nan": "sae_weights.safetensors",
             "weights-missing": "sae_weights.safetensors", "cfg-truncated": "cfg.json", "cfg-empty": "cfg.json",
             "cfg-list": "cfg.json", "cfg-missing": "cfg.json", "cfg-huge-width": "sae_weights.safetensors",
             "cfg-wrong-hook": "blocks.9.hook_resid_post", "cfg-wrong-width": "d_in"}
for name, fragment in BAD_DICTS.items():
    case("corrupt-dict", ["eval-dict", f"{{bad:{name}}}", *GPT, "--seq-len", "32"], fragment)
for name in ("weights-truncated", "weights-header-bomb", "weights-pickled", "cfg-truncated"):
    case("corrupt-dict", ["tc-circuit", *GPT, "--prompt", "t1 t2", "--transcoder", f"{{bad:{name}}}", "{tc1}"],
         BAD_DICTS[name])
case("corrupt-dict", ["eval-dict", "{dict}", "{dict}", *GPT], "twice")
case("corrupt-dict", ["eval-dict", "{dict}", "{dict}/../" + "{dictname}", *GPT], "twice")
case("corrupt-dict", ["eval-dict", "/no/such/folder", *GPT], "/no/such/folder")
case("corrupt-dict", ["eval-dict", "{file}", *GPT], "{file}")
case("corrupt-dict", ["eval-dict", *GPT], "PATH")

# --- files where folders belong ------------------------------------------------------------------------------------
case("file-as-folder", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--workdir", "{file}"], "--workdir")
case("file-as-folder", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--spill-dir", "{file}"], "--spill-dir")
case("file-as-folder", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--workdir", "{file}/sub"], "--workdir")
case("file-as-folder", ["train-dict", *MODEL_VERBS["train-dict"], *GPT, "--spill-dir", "{file}/sub"], "--spill-dir")
case("file-as-folder", ["sparsity", *MODEL_VERBS["sparsity"], "--model", "{file}", "--device", "cpu"], "{file}")

# --- the verbs without a model --------------------------------------------------------------------------------------
case("dynamics", ["dynamics", ""], "TARGET")
case("dynamics", ["dynamics", "no-such-family"], "no-such-family")
case("dynamics", ["dynamics", "llama", "--sequences", "0"], "--sequences")
case("dynamics", ["dynamics", "llama", "--context", "1"], "--context")
case("dynamics", ["dynamics", "/no/such/checkpoints", "--checkpoints"], "/no/such/checkpoints")
case("dynamics", ["dynamics", "{file}", "--checkpoints"], "{file}")
case("dynamics", ["dynamics", "nobody/model@1,2,3,4,5", "--checkpoints"], "nobody/model", "offline")
case("dynamics", ["dynamics"], "TARGET")
case("formation", ["formation", "--clamps", "none", "L3.H0.pattern=uniform"], "--clamps", "L3.H0.pattern",
     "L0.H0.pattern")
case("formation", ["formation", "--clamps", "L0.attn=uniform"], "--clamps", "uniform", "zero")
case("formation", ["formation", "--clamps", "L0.attn"], "--clamps", "COMPONENT=WHAT")
case("formation", ["formation", "--clamps", "L0.H0.pattern=zero@9:3"], "--clamps", "window")
case("formation", ["formation", "--steps", "0"], "--steps")
case("formation", ["formation", "--d-model", "33"], "--d-model", "--heads")
case("formation", ["formation", "--device", "tpu9"], "--device")
case("ssa", ["ssa", "--fraction", "0"], "--fraction")
case("ssa", ["ssa", "--fraction", "1.5"], "--fraction")
case("ssa", ["ssa", "--locality", "-1"], "--locality")
case("ssa", ["ssa", "--ensemble", "0"], "--ensemble")
case("zoo-training", ["zoo-training", "--name", "no-such-member"], "no-such-member")
case("zoo-training", ["zoo-training", "--name", "../etc"], "../etc")
case("zoo", ["zoo", "build", "no-such-member"], "no-such-member")
case("zoo", ["zoo", "nothing"], "zoo verb")
case("runs", ["runs", "--kind", "../etc"], "kind")
case("demo", ["demo", "--device", "cuda"], "--device")
case("demo", ["demo", "--device", "tpu9"], "--device")
case("app", ["app", "--port", "99999"], "--port")
case("app", ["app", "--port", "0"], "--port")
case("app", ["app", "--port", "http"], "--port")
case("verb", ["no-such-verb"], "no-such-verb")


class Hang(BaseException):
    """A case ran past its time limit (a BaseException, so the command line's error handler does not catch it)."""


def _alarm(signum, frame):
    raise Hang("the command ran past 30 s")


SPOILED_WEIGHTS = ("weights-empty", "weights-header-bomb", "weights-pickled", "weights-torch-save")


def _spoil(w: Path, name: str, tensors: dict) -> None:
    """Overwrite the weights file ``w`` the way ``name`` (one of SPOILED_WEIGHTS) says."""
    if name == "weights-empty":
        w.write_bytes(b"")
    elif name == "weights-header-bomb":
        w.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif name == "weights-pickled":
        w.write_bytes(PICKLED)
    else:
        import torch  # this module imports torch only where it is needed (its CLI cases check the light startup)

        torch.save(tensors, w)


def _save_tiny_dict(folder: Path, hook: str, kind: str = "sae") -> None:
    from circuits.dictionaries.model import Dictionary
    from circuits.dictionaries.saelens_io import save_dictionary

    options = {"hook_in": hook}
    if kind != "sae":
        layer = hook.split(".")[1]
        options.update(hook_out=f"blocks.{layer}.hook_mlp_out", activation="topk", k=4)
    save_dictionary(Dictionary.create(kind, 32, 64, **options), folder)


def _save_bad_clts(root: Path, out: dict[str, str]) -> None:
    """Cross-layer transcoder folders in circuit-tracer's layout, each spoiled one way (``{clt:NAME}``)."""
    import torch
    from safetensors.torch import load_file, save_file

    from circuits.dictionaries.clt import CrossLayerTranscoder
    from circuits.dictionaries.clt_io import save_clt

    for name in ("yaml", "hook", "tensor", "other", "shape"):
        folder = save_clt(CrossLayerTranscoder.create(3 if name == "other" else 2, 32, 16), root / name)
        cfg = folder / "config.yaml"
        if name == "yaml":
            cfg.write_text("model_kind: [cross_layer_transcoder\n")
        elif name == "hook":
            cfg.write_text(cfg.read_text().replace("hook_mlp_out", "hook_resid_post"))
        elif name == "tensor":
            t = load_file(str(folder / "W_enc_1.safetensors"))
            save_file({k: v for k, v in t.items() if k != "b_dec_1"}, str(folder / "W_enc_1.safetensors"))
        elif name == "shape":
            save_file({"W_dec_0": torch.zeros(16, 1, 32)}, str(folder / "W_dec_0.safetensors"))
        out[f"clt:{name}"] = str(folder)


def _header(meta: dict) -> bytes:
    body = json.dumps(meta).encode()
    return struct.pack("<Q", len(body)) + body


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_gpt2, tiny_llama) -> dict[str, str]:
    """Every placeholder of the cases: the tiny models, good and corrupt dictionaries and model folders, a file."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bad-input")
    out = {"gpt": tiny_gpt2.workbench_spec, "llama": tiny_llama.workbench_spec}
    good = root / "dict"
    _save_tiny_dict(good, "blocks.0.hook_resid_post")
    out.update(dict=str(good), dictname="dict")
    for layer in (0, 1):
        _save_tiny_dict(root / f"tc{layer}", f"blocks.{layer}.ln2.hook_normalized", kind="transcoder")
        out[f"tc{layer}"] = str(root / f"tc{layer}")
    weights = (good / "sae_weights.safetensors").read_bytes()
    cfg = json.loads((good / "cfg.json").read_text())
    tensors = {"W_enc": torch.zeros(32, 64)}
    for name in BAD_DICTS:
        folder = root / "bad" / name
        shutil.copytree(good, folder)
        w, c = folder / "sae_weights.safetensors", folder / "cfg.json"
        if name == "weights-truncated":
            w.write_bytes(weights[: len(weights) // 2])
        elif name in SPOILED_WEIGHTS:
            _spoil(w, name, tensors)
        elif name == "weights-nan":
            from safetensors.torch import load_file

            t = load_file(str(w))
            t["W_enc"][0, 0] = float("nan")
            save_file(t, str(w))
        elif name == "weights-missing":
            w.unlink()
        elif name == "cfg-truncated":
            c.write_text(c.read_text()[:20])
        elif name == "cfg-empty":
            c.write_text("")
        elif name == "cfg-list":
            c.write_text("[]")
        elif name == "cfg-missing":
            c.unlink()
        elif name == "cfg-huge-width":
            c.write_text(json.dumps({**cfg, "d_sae": 4_000_000}))
        elif name == "cfg-wrong-hook":
            c.write_text(json.dumps({**cfg, "metadata": {**cfg["metadata"], "hook_name": "blocks.9.hook_resid_post"}}))
        elif name == "cfg-wrong-width":
            from circuits.dictionaries.model import Dictionary
            from circuits.dictionaries.saelens_io import save_dictionary

            save_dictionary(Dictionary.create("sae", 16, 64, hook_in="blocks.0.hook_resid_post"), folder)
        out[f"bad:{name}"] = str(folder)
    source = Path(tiny_gpt2.workbench_spec)
    for name in ("config-truncated", "config-empty", "config-list", "config-no-type", "weights-truncated",
                 "weights-empty", "weights-header-bomb", "weights-pickled", "weights-torch-save", "bin-pickled",
                 "no-weights"):
        folder = root / "models" / name
        shutil.copytree(source, folder)
        c, w = folder / "config.json", folder / "model.safetensors"
        if name == "config-truncated":
            c.write_text(c.read_text()[:30])
        elif name == "config-empty":
            c.write_text("")
        elif name == "config-list":
            c.write_text("[1, 2]")
        elif name == "config-no-type":
            c.write_text(json.dumps({"hidden_size": 32}))
        elif name == "weights-truncated":
            w.write_bytes(w.read_bytes()[:1000])
        elif name in SPOILED_WEIGHTS:
            _spoil(w, name, tensors)
        elif name == "bin-pickled":
            w.unlink()
            (folder / "pytorch_model.bin").write_bytes(PICKLED)
        elif name == "no-weights":
            w.unlink()
        out[f"model:{name}"] = str(folder)
    _save_bad_clts(root / "clt", out)
    plain = root / "plain-file.txt"
    plain.write_text("not a folder\n")
    out["file"] = str(plain)
    return out


def _fill(text: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", value)
    return text


def run_case(argv: list[str], places: dict[str, str], capsys, limit: int = 30) -> tuple[int | str, str]:
    """``(exit status or 'hang', standard error)`` of one command line, run in-process."""
    argv = [_fill(a, places) for a in argv]
    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        code: int | str = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 1
    except Hang:
        code = "hang"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, capsys.readouterr().err


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for kind, argv, _ in CASES:
        label = f"{kind}-{argv[0]}"
        seen[label] = seen.get(label, 0) + 1
        out.append(f"{label}-{seen[label]}")
    return out


def test_the_battery_is_large_and_covers_every_verb():
    from workbench.ui.registry import analyses

    assert len(CASES) >= 150
    verbs = {argv[0] for _, argv, _ in CASES}
    assert {a.verb for a in analyses()} <= verbs
    assert {"models", "zoo", "runs", "demo", "app"} - verbs <= {"models"}  # `models` takes no input to get wrong


def outcome(code: int | str, err: str, fragments: list[str]) -> tuple[str, str]:
    """``(verdict, message)``: verdict clear, vague (status 2 but the option or file is not named), traceback,
    silent (status 0) or hang; message: the error lines."""
    message = "\n".join(line for line in err.splitlines() if "error" in line)
    if code == "hang":
        return "hang", message
    if code == 0:
        return "silent", message
    if code != 2 or "Traceback" in err or not message:
        return "traceback", message or err[-500:]
    if all(f.lower() in message.lower() for f in fragments):
        return "clear", message
    return "vague", message


@pytest.mark.parametrize(("kind", "argv", "fragments"), CASES, ids=_ids())
def test_bad_input_is_a_clear_error(kind, argv, fragments, places, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    code, err = run_case(argv, places, capsys)
    verdict, message = outcome(code, err, [_fill(f, places) for f in fragments])
    log = os.environ.get("WORKBENCH_BAD_INPUT_LOG")
    if log:  # one JSON line per case, for counting the battery's outcomes
        with open(log, "a") as f:
            f.write(json.dumps({"kind": kind, "argv": [a[:80] for a in argv], "verdict": verdict,
                                "message": message[-600:]}) + "\n")
    assert verdict == "clear", f"{verdict} (exit status {code}): {message}"
    assert not list((tmp_path / "runs").rglob("manifest.json")), "a failed command stored a run"
