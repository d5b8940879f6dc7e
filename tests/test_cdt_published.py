"""``Rules.published()`` reproduces the published CD-T code (adelaidehsu/CD_Circuit, ``pyfunctions/cdt_source_to_target.py``
``prop_GPT`` with ``cdt_core.py`` and ``cdt_ablations.py``), ported below step by step in float64 from the model's raw
weights, on a tiny random GPT-2 loaded without weight processing.

The port follows the published functions one by one (names kept): ``normalize_rel_irrel`` (the sign rule, in place),
``prop_linear_core`` (biases shared by ``|W rel| / (|W rel| + |W irrel| + 1e-8)``), ``prop_layer_norm`` (epsilon 1e-8 as
``GPTLayerNormWrapper.eps`` hard-codes it, the bias shared by the parts of the norm's input), ``prop_attention_probs_tmp``
and ``prop_attention_no_output_hh`` (the relevant pattern from relevant queries and keys), ``set_rel_at_source_nodes``
(``set_irrel_to_mean``: mean ablation), ``prop_act`` with ``NewGELUActivation`` and ``prop_GPT_layer``. The decomposition
starts from the embedding with ``rel = 0`` (``cached_pre_layer_acts=None``); the mean activations come from the model's own
run over the reference prompts, as the published notebooks take them (``model.run_with_cache``).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from circuits.cdt import Rules, decompose_sources, prepare
from circuits.cdt.decompose import decompose
from circuits.cdt.nodes import parse_nodes
from workbench.data import make_task

TOL = 1e-8  # the published tolerance of every bias share, and its LayerNorm epsilon
N_LAYERS, N_HEADS, D_MODEL = 3, 4, 32


@pytest.fixture(scope="module")
def raw_gpt2(tmp_path_factory):
    """(bridge in float64 without weight processing, the transformers model): a random GPT-2 with random biases and
    LayerNorm weights, so that every bias share and norm weight is exercised."""
    from transformers import AutoModelForCausalLM, GPT2Config

    from workbench.induction_toy import make_tokenizer
    from workbench.models import load_model

    config = GPT2Config(vocab_size=65, n_positions=64, n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
                        bos_token_id=64, eos_token_id=64, activation_function="gelu_new")
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif ".ln_" in name:
                p.normal_(1, 0.2)
    folder = tmp_path_factory.mktemp("raw-gpt2")
    hf.save_pretrained(folder)
    make_tokenizer(config.vocab_size - 1).save_pretrained(folder)
    bridge = load_model(str(folder), device="cpu", dtype=torch.float64, weight_processing=False)
    return bridge, hf.double()


# ---- the port --------------------------------------------------------------------------------------------------


def normalize_rel_irrel(rel, irrel):
    tot = rel + irrel
    tot_mask = (rel * irrel) < 0
    rel_mask = tot_mask & (rel.abs() >= irrel.abs())
    irrel_mask = tot_mask & (~rel_mask)
    rel[rel_mask] = tot[rel_mask]
    rel[irrel_mask] = 0
    irrel[irrel_mask] = tot[irrel_mask]
    irrel[rel_mask] = 0


def prop_linear_core(rel, irrel, W, b, tol=TOL):
    rel_t = torch.matmul(rel, W)
    irrel_t = torch.matmul(irrel, W)
    exp_bias = b.expand_as(rel_t)
    tot_wt = torch.abs(rel_t) + torch.abs(irrel_t) + tol
    return rel_t + exp_bias * (torch.abs(rel_t) / tot_wt), irrel_t + exp_bias * (torch.abs(irrel_t) / tot_wt)


def prop_layer_norm(rel, irrel, weight, bias, eps=TOL, tol=TOL):
    tot = rel + irrel
    rel_mn = torch.mean(rel, dim=2).unsqueeze(-1).expand_as(rel)
    irrel_mn = torch.mean(irrel, dim=2).unsqueeze(-1).expand_as(irrel)
    vr = (torch.mean(tot ** 2, dim=2) - torch.mean(tot, dim=2) ** 2).unsqueeze(-1).expand_as(tot)
    rel_wt, irrel_wt = torch.abs(rel), torch.abs(irrel)
    tot_wt = rel_wt + irrel_wt + tol
    rel_t = ((rel - rel_mn) / torch.sqrt(vr + eps)) * weight
    irrel_t = ((irrel - irrel_mn) / torch.sqrt(vr + eps)) * weight
    return rel_t + bias * (rel_wt / tot_wt), irrel_t + bias * (irrel_wt / tot_wt)


def new_gelu(x):  # transformers.activations.NewGELUActivation
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def prop_act(r, ir):
    ir_act = new_gelu(ir)
    return new_gelu(r + ir) - ir_act, ir_act


def mul_att(att_probs, value, n_heads):
    """[B, H, T, T] x [B, T, H*dh] -> [B, T, H*dh] (``transpose_for_scores``, matmul, concatenate the heads)."""
    B, T, _ = value.shape
    v = value.view(B, T, n_heads, -1).permute(0, 2, 1, 3)
    ctx = torch.matmul(att_probs, v).permute(0, 2, 1, 3).contiguous()
    return ctx.view(B, T, -1)


def _project(rel, irrel, W, b, tol=TOL):
    """The query / key projection of ``prop_attention_probs_tmp``: per head, the bias shared by magnitude."""
    rel_t = torch.einsum("bqd,hde->bqhe", rel, W)
    irrel_t = torch.einsum("bqd,hde->bqhe", irrel, W)
    exp_bias = b.expand_as(rel_t)
    tot = torch.abs(rel_t) + torch.abs(irrel_t) + tol
    return rel_t + exp_bias * (torch.abs(rel_t) / tot), irrel_t + exp_bias * (torch.abs(irrel_t) / tot)


def prop_attention(rel, irrel, attention_mask, layer):
    """``prop_attention_probs_tmp`` + ``prop_attention_no_output_hh``: the summed values [B, T, H*dh] of each part."""
    rel_queries, irrel_queries = _project(rel, irrel, layer["W_Q"], layer["b_Q"])
    rel_keys, irrel_keys = _project(rel, irrel, layer["W_K"], layer["b_K"])
    dh = rel_keys.shape[-1]
    total_scores = torch.einsum("bqhe,bkhe->bhqk", rel_queries + irrel_queries, rel_keys + irrel_keys) / math.sqrt(dh)
    total_scores += attention_mask
    rel_scores = torch.einsum("bqhe,bkhe->bhqk", rel_queries, rel_keys) / math.sqrt(dh)
    rel_scores += attention_mask
    total_probs = torch.softmax(total_scores, dim=-1)
    rel_probs = torch.softmax(rel_scores, dim=-1)
    irrel_probs = total_probs - rel_probs
    att_probs = rel_probs + irrel_probs
    rel_value, irrel_value = prop_linear_core(rel, irrel, layer["W_V"], layer["b_V"])  # GPTValueMatrixWrapper
    total_context = mul_att(att_probs, rel_value + irrel_value, N_HEADS)
    rel_context = mul_att(rel_probs, rel_value, N_HEADS)
    return rel_context, total_context - rel_context


def set_rel_at_source_nodes(rel, irrel, ablation_dict, layer_mean_acts, layer_idx, set_irrel_to_mean):
    B, T, _ = rel.shape
    rel, irrel = rel.view(B, T, N_HEADS, -1), irrel.view(B, T, N_HEADS, -1)
    mean = layer_mean_acts[None]  # [1, T, H, dh]
    for ablation, rows in ablation_dict.items():
        for layer, sq, head in ablation:
            if layer != layer_idx:
                continue
            if set_irrel_to_mean:
                rel[rows, sq, head, :] = irrel[rows, sq, head, :] + rel[rows, sq, head, :] - mean[:, sq, head, :]
                irrel[rows, sq, head, :] = mean[:, sq, head, :]
            else:
                rel[rows, sq, head, :] = irrel[rows, sq, head, :] + rel[rows, sq, head, :]
                irrel[rows, sq, head, :] = 0
    return rel.view(B, T, -1), irrel.view(B, T, -1)


def prop_gpt_layer(rel, irrel, attention_mask, ablation_dict, level, layer_mean_acts, layer, set_irrel_to_mean):
    rel_ln, irrel_ln = prop_layer_norm(rel, irrel, layer["ln1_w"], layer["ln1_b"])
    rel_summed, irrel_summed = prop_attention(rel_ln, irrel_ln, attention_mask, layer)
    rel_summed, irrel_summed = set_rel_at_source_nodes(rel_summed, irrel_summed, ablation_dict, layer_mean_acts, level,
                                                       set_irrel_to_mean)
    rel_attn, irrel_attn = prop_linear_core(rel_summed, irrel_summed, layer["W_O"], layer["b_O"])
    rel_mid, irrel_mid = rel + rel_attn, irrel + irrel_attn
    rel_mid_norm, irrel_mid_norm = prop_layer_norm(rel_mid, irrel_mid, layer["ln2_w"], layer["ln2_b"])
    rel_in, irrel_in = prop_linear_core(rel_mid_norm, irrel_mid_norm, layer["W_in"], layer["b_in"])
    normalize_rel_irrel(rel_in, irrel_in)
    rel_act, irrel_act = prop_act(rel_in, irrel_in)
    rel_mlp, irrel_mlp = prop_linear_core(rel_act, irrel_act, layer["W_out"], layer["b_out"])
    normalize_rel_irrel(rel_mlp, irrel_mlp)
    rel_out, irrel_out = rel_mid + rel_mlp, irrel_mid + irrel_mlp
    normalize_rel_irrel(rel_out, irrel_out)
    return rel_out, irrel_out


def raw_weights(hf) -> tuple[list[dict], dict]:
    """Per layer and final weights from the transformers GPT-2 (Conv1D: ``x @ W + b``), heads split as in TransformerLens."""
    sd = {k: v.detach() for k, v in hf.state_dict().items()}
    d, H = D_MODEL, N_HEADS
    layers = []
    for i in range(N_LAYERS):
        p = f"transformer.h.{i}."
        W, b = sd[p + "attn.c_attn.weight"], sd[p + "attn.c_attn.bias"]
        heads = [W[:, j * d:(j + 1) * d].reshape(d, H, -1).permute(1, 0, 2) for j in range(3)]  # [H, d, dh]
        layers.append({
            "ln1_w": sd[p + "ln_1.weight"], "ln1_b": sd[p + "ln_1.bias"],
            "W_Q": heads[0], "W_K": heads[1], "b_Q": b[:d].view(H, -1), "b_K": b[d:2 * d].view(H, -1),
            "W_V": W[:, 2 * d:], "b_V": b[2 * d:],  # concatenated over heads, as GPTValueMatrixWrapper gives them
            "W_O": sd[p + "attn.c_proj.weight"], "b_O": sd[p + "attn.c_proj.bias"],
            "ln2_w": sd[p + "ln_2.weight"], "ln2_b": sd[p + "ln_2.bias"],
            "W_in": sd[p + "mlp.c_fc.weight"], "b_in": sd[p + "mlp.c_fc.bias"],
            "W_out": sd[p + "mlp.c_proj.weight"], "b_out": sd[p + "mlp.c_proj.bias"],
        })
    final = {"wte": sd["transformer.wte.weight"], "wpe": sd["transformer.wpe.weight"],
             "lnf_w": sd["transformer.ln_f.weight"], "lnf_b": sd["transformer.ln_f.bias"],
             "W_U": sd["lm_head.weight"].T, "b_U": torch.zeros(sd["lm_head.weight"].shape[0], dtype=torch.float64)}
    return layers, final


def prop_gpt(tokens, hf, ablation_list, mean_acts, set_irrel_to_mean):
    """``prop_GPT`` from the embedding: logits of (rel, irrel) [len(ablation_list) * B, T, V]."""
    layers, final = raw_weights(hf)
    B, T = tokens.shape
    ablation_dict = {ab: list(range(i * B, (i + 1) * B)) for i, ab in enumerate(ablation_list)}
    causal = torch.ones(T, T, dtype=torch.float64).tril()
    attention_mask = ((1.0 - causal) * torch.finfo(torch.float64).min)[None, None]  # get_extended_attention_mask
    embedding = final["wte"][tokens] + final["wpe"][:T]
    irrel = embedding.repeat(len(ablation_list), 1, 1)
    rel = torch.zeros_like(irrel)
    for i, layer in enumerate(layers):
        rel, irrel = prop_gpt_layer(rel, irrel, attention_mask, ablation_dict, i, mean_acts[i], layer,
                                    set_irrel_to_mean)
    rel, irrel = prop_layer_norm(rel, irrel, final["lnf_w"], final["lnf_b"])
    return prop_linear_core(rel, irrel, final["W_U"], final["b_U"])


# ---- the checks ------------------------------------------------------------------------------------------------


def _task(bridge):
    base = make_task("induction", bridge.tokenizer, n=3, seed=1, half_len=5)
    return dataclasses.replace(base, metric_name="logit_diff", score_positions=None)


def _published(bridge, hf, task, sources, ablation):
    """The port's relevant logit difference [S, B] and total logit difference [B] for node tuples ``sources``."""
    _, cache = bridge.run_with_cache(task.corrupted_tokens)
    mean_acts = [cache[f"blocks.{i}.attn.hook_z"].mean(0) for i in range(N_LAYERS)]  # [T, H, dh], the model's own
    with torch.no_grad():
        rel, irrel = prop_gpt(task.clean_tokens, hf, sources, mean_acts, set_irrel_to_mean=ablation == "mean")
    B = task.batch_size
    rows = torch.arange(len(sources) * B)
    pos, correct, incorrect = (t.repeat(len(sources)) for t in (task.answer_positions, task.correct, task.incorrect))

    def diff(x):
        return (x[rows, pos, correct] - x[rows, pos, incorrect]).view(len(sources), B)

    return diff(rel), diff(rel + irrel)[0]


def _sources(T: int):
    """Single-position head sources (every head at two positions) and all-position ones (every head), as node
    tuples for the port and as ids for the project."""
    single = [(layer, p, h) for layer in range(N_LAYERS) for h in range(N_HEADS) for p in (3, T - 1)]
    tuples = [(s,) for s in single] + [tuple((layer, p, h) for p in range(T)) for layer in range(N_LAYERS)
                                         for h in range(N_HEADS)]
    ids = [f"L{lay}.H{h}@{p}" for lay, p, h in single] + [f"L{lay}.H{h}" for lay in range(N_LAYERS)
                                                          for h in range(N_HEADS)]
    return tuples, ids


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_published_rules_reproduce_the_published_code(raw_gpt2, ablation):
    bridge, hf = raw_gpt2
    task = _task(bridge)
    tuples, ids = _sources(task.seq_len)
    want, _ = _published(bridge, hf, task, tuples, ablation)
    ctx = prepare(bridge, task, ablation=ablation, dtype=torch.float64)
    rules = Rules.published()
    fast = decompose_sources(ctx, sources=ids, **rules.to_dict())
    torch.testing.assert_close(fast.metric_per_example, want, rtol=0, atol=1e-6)
    nodes = parse_nodes(ids, what="sources", **ctx.sizes)
    ref = decompose(ctx.weights, ctx.task, ctx.cache, ctx.means, nodes, rules=rules, reference=True)
    torch.testing.assert_close(ref.metric_beta, want, rtol=0, atol=1e-6)
    # the clean run the published code decomposes (its pass with rel = 0: a source after the answer leaves it so)
    last = task.seq_len - 1
    _, clean_total = _published(bridge, hf, task, [((N_LAYERS - 1, last, 0),)], ablation)
    after = parse_nodes([f"L{N_LAYERS - 1}.H0@{last}"], what="sources", **ctx.sizes)
    got_total = decompose(ctx.weights, ctx.task, ctx.cache, ctx.means, after, rules=rules).metric_total
    torch.testing.assert_close(got_total, clean_total, rtol=0, atol=1e-10)
    assert want.abs().max() > 0.05  # the comparison is not between near-zero numbers
    # the norm epsilon takes effect: with the model's own (1e-5) the answer moves well beyond the tolerance
    own_eps = decompose_sources(ctx, sources=ids, **{**rules.to_dict(), "norm_eps": None})
    assert (own_eps.metric_per_example - want).abs().max() > 1e-3
    # and so do the published bias shares: LayerNorm biases by the normed parts instead move it too
    by_output = decompose_sources(ctx, sources=ids, **{**rules.to_dict(), "norm_bias": "output"})
    assert (by_output.metric_per_example - want).abs().max() > 1e-3


def test_unprocessed_weights_are_the_checkpoints(raw_gpt2):
    """``weight_processing=False`` keeps the checkpoint's weights: LayerNorm not folded, value biases where they were."""
    bridge, hf = raw_gpt2
    layers, final = raw_weights(hf)
    assert not bridge.workbench_weight_processing
    torch.testing.assert_close(bridge.blocks[1].ln1.weight.detach(), layers[1]["ln1_w"], rtol=0, atol=0)
    torch.testing.assert_close(bridge.W_Q[2].detach(), layers[2]["W_Q"], rtol=0, atol=0)
    torch.testing.assert_close(bridge.b_V[0].detach().flatten(), layers[0]["b_V"], rtol=0, atol=0)
    tokens = _task(bridge).clean_tokens
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, rtol=0, atol=1e-12)


def test_float64_weight_processing_is_float64(raw_gpt2, tmp_path):
    """A float64 model is processed in float64: the processed model's next-token log-probabilities equal the
    unprocessed one's to float64 rounding (the library's own float32 processing leaves about 1e-8)."""
    from workbench.models import load_model

    bridge, hf = raw_gpt2
    hf.save_pretrained(tmp_path)
    bridge.tokenizer.save_pretrained(tmp_path)
    processed = load_model(str(tmp_path), device="cpu", dtype=torch.float64)
    assert processed.workbench_weight_processing
    assert not torch.equal(processed.blocks[0].ln1.weight.detach(), bridge.blocks[0].ln1.weight.detach())  # folded
    tokens = _task(bridge).clean_tokens
    with torch.no_grad():
        got, want = processed(tokens).log_softmax(-1), bridge(tokens).log_softmax(-1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
