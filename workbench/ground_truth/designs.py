"""The designed ground truths: each a task (training data, clean/corrupted pairs) and the circuit that must solve it.

Every design's vocabulary is ``names`` in id order: the input tokens, then the output labels (if any), then ``<bos>``
(the last id). Training batches are ``(tokens [n, S], targets [n, S])`` with target -1 at unscored positions; the
task pairs differ only in what the circuit reads, and their metric is the logit difference, at the last position,
of the clean answer against the corrupted input's answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BOS = "<bos>"

# pairs(generator, n) -> (clean [n, S], corrupted [n, S], correct [n], incorrect [n]); the answer is at S - 1
Pairs = Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Design:
    """A designed ground truth: architecture, data, circuit (edges) and training length."""

    name: str
    description: str
    task_name: str
    names: tuple[str, ...]
    n_layers: int
    n_heads: int
    d_model: int
    seq_len: int
    edges: frozenset[str]
    batch: Callable[[torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]
    pairs: Pairs
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0
    distractor_qk: float = 10.0
    distractor_vo: float = 6.0
    d_mlp: int = 0  # 0: attention-only (MLPs zeroed and frozen); else SwiGLU MLPs of this width

    @property
    def bos(self) -> int:
        return len(self.names) - 1

    @property
    def nodes(self) -> frozenset[str]:
        ends = {n for e in self.edges for n in e.split("->")}
        return frozenset(n for n in ends if n not in ("emb", "logit"))

    def config(self) -> dict:
        """What the zoo stores and compares to decide whether a built member is stale."""
        return {"design": self.name, "n_layers": self.n_layers, "n_heads": self.n_heads, "d_model": self.d_model,
                "seq_len": self.seq_len, "vocab": list(self.names), "edges": sorted(self.edges), "steps": self.steps,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed, "distractor_qk": self.distractor_qk,
                "distractor_vo": self.distractor_vo, "version": 2, **({"d_mlp": self.d_mlp} if self.d_mlp else {})}


def _with_bos(body: torch.Tensor, bos: int) -> torch.Tensor:
    return torch.cat([torch.full((body.shape[0], 1), bos, dtype=torch.long), body], dim=1)


def _other(values: torch.Tensor, high: int, gen: torch.Generator, low: int = 0) -> torch.Tensor:
    """A uniform id in [low, high) different from each of ``values`` [n]."""
    shift = torch.randint(1, high - low, values.shape, generator=gen)
    return (values - low + shift) % (high - low) + low


# ---- previous token: the answer at every position is the token before it --------------------------------------------
def _lag_design(name: str, lag: int, n_layers: int, edges: set[str], description: str, steps: int) -> Design:
    vocab, length = 16, 10
    bos = vocab

    def batch(gen: torch.Generator, n: int):
        tokens = _with_bos(torch.randint(0, vocab, (n, length), generator=gen), bos)
        targets = torch.full_like(tokens, -1)
        targets[:, lag + 1:] = tokens[:, 1:-lag]
        return tokens, targets

    def pairs(gen: torch.Generator, n: int):
        clean, _ = batch(gen, n)
        corrupted = clean.clone()
        corrupted[:, -1 - lag] = _other(clean[:, -1 - lag], vocab, gen)
        return clean, corrupted, clean[:, -1 - lag], corrupted[:, -1 - lag]

    return Design(name, description, name.removeprefix("gt-"), tuple(f"t{i}" for i in range(vocab)) + (BOS,),
                  n_layers, 2, 32, 1 + length, frozenset(edges), batch, pairs, steps=steps)


def prev_token() -> Design:
    return _lag_design(
        "gt-prev-token", 1, 1, {"emb->L0.H1", "L0.H1->logit"},
        "1 layer, 2 heads: predicts the previous token at every position; circuit: head L0.H1 alone.", 300)


def prev2_token() -> Design:
    return _lag_design(
        "gt-prev2-token", 2, 2, {"emb->L0.H0", "L0.H0->L1.H1", "L1.H1->logit"},
        "2 layers, 2 heads: predicts the token two back; L0.H0 moves the previous token forward and L1.H1, which "
        "reads only L0.H0 (not the embeddings), moves it one further.", 800)


# ---- induction with designated heads ----------------------------------------------------------------------------------
def induction() -> Design:
    vocab, half = 24, 8
    bos = vocab

    def batch(gen: torch.Generator, n: int):
        body = torch.randint(0, vocab, (n, 2 * half), generator=gen)
        body[:, :half] = torch.rand(n, vocab, generator=gen).argsort(-1)[:, :half]  # distinct tokens up front
        period = torch.randint(3, half + 1, (n, 1), generator=gen)
        pos = torch.arange(2 * half)[None]
        repeat = (pos >= period) & (pos < 2 * period)
        body = body.gather(1, torch.where(repeat, pos - period, pos))
        tokens = _with_bos(body, bos)
        targets = torch.full_like(tokens, -1)
        # token i + 1 (position i + 2) is predictable at position i + 1 when i + 1 lies in the repeat
        predictable = repeat[:, 1:] & repeat[:, :-1]
        targets[:, 1:-1] = torch.where(predictable, body[:, 1:], -1)
        return tokens, targets

    def pairs(gen: torch.Generator, n: int):
        first = torch.rand(n, vocab, generator=gen).argsort(-1)
        a, spare = first[:, :half], first[:, half]
        clean = _with_bos(torch.cat([a, a[:, :-1]], dim=1), bos)
        corrupted = clean.clone()
        # even rows: the token after the earlier copy of the last token a[h-2] becomes a spare token (what the
        # induction head's values read); odd rows: a[h-2] swaps places with an earlier a[k] of the first copy, so
        # the previous-token head marks a[k+1] as following it instead (what the induction head's keys read)
        rows = torch.arange(n)
        k = torch.randint(0, half - 3, (n,), generator=gen)
        swap = rows % 2 == 1
        corrupted[~swap, half] = spare[~swap]
        corrupted[swap, half - 1] = a[swap, k[swap]]
        corrupted[swap, 1 + k[swap]] = a[swap, half - 2]
        incorrect = torch.where(swap, a[rows, (k + 1).clamp(max=half - 1)], spare)
        return clean, corrupted, a[:, -1], incorrect

    return Design(
        "gt-induction", "2 layers, 2 heads: random tokens whose first part repeats; L0.H1 is the previous-token head, "
        "L1.H0 the induction head (its keys read L0.H1, its queries and values the embeddings). The corrupted inputs "
        "change what the values read (even rows) or what the keys read (odd rows).", "induction",
        tuple(f"t{i}" for i in range(vocab)) + (BOS,), 2, 2, 32, 1 + 2 * half,
        frozenset({"emb->L0.H1", "emb->L1.H0", "L0.H1->L1.H0", "L1.H0->logit"}), batch, pairs, steps=1000,
        distractor_qk=3.0, distractor_vo=2.0)  # louder distractors stall the induction head within these steps


# ---- histogram: how many times the current token has occurred so far -------------------------------------------------
def histogram() -> Design:
    vocab, length = 4, 8
    labels = tuple(f"n{c}" for c in range(1, length + 1))
    bos = vocab + len(labels)

    def batch(gen: torch.Generator, n: int):
        body = torch.randint(0, vocab, (n, length), generator=gen)
        same = body[:, :, None] == body[:, None, :]  # [n, query, key]
        counts = (same & torch.ones(length, length, dtype=torch.bool).tril()).sum(-1)  # 1..length
        tokens = _with_bos(body, bos)
        targets = _with_bos(vocab + counts - 1, -1)
        return tokens, targets

    def pairs(gen: torch.Generator, n: int):
        rows, corrupted_rows, good, bad = [], [], [], []
        while len(rows) < n:
            tokens, targets = batch(gen, n)
            last = tokens[:, -1:]
            earlier = (tokens[:, 1:-1] == last)
            for b in torch.nonzero(earlier.any(-1)).flatten().tolist():
                where = torch.nonzero(earlier[b]).flatten()
                pick = int(where[torch.randint(0, len(where), (1,), generator=gen)]) + 1
                bad_row = tokens[b].clone()
                bad_row[pick] = int(_other(tokens[b, pick:pick + 1], vocab, gen)[0])
                rows.append(tokens[b])
                corrupted_rows.append(bad_row)
                good.append(int(targets[b, -1]))
                bad.append(int(targets[b, -1]) - 1)
        return (torch.stack(rows[:n]), torch.stack(corrupted_rows[:n]), torch.tensor(good[:n]), torch.tensor(bad[:n]))

    return Design(
        "gt-histogram", "1 layer, 2 heads: at every position, the count of the current token so far (labels n1..n8); "
        "circuit: head L0.H0 (attends to BOS and the earlier copies).", "histogram",
        tuple(f"t{i}" for i in range(vocab)) + labels + (BOS,), 1, 2, 32, 1 + length,
        frozenset({"emb->L0.H0", "L0.H0->logit"}), batch, pairs, steps=1500, distractor_qk=5.0,
        distractor_vo=3.0)


# ---- greater-than: is the first number larger than the second ---------------------------------------------------------
def greater_than() -> Design:
    numbers = 16
    yes, no = numbers, numbers + 1
    bos = numbers + 2

    def sample(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.randint(0, numbers, (n,), generator=gen)
        b = _other(a, numbers, gen)
        return a, b

    def row(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _with_bos(torch.stack([a, b], dim=1), bos)

    def answer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(a > b, yes, no)

    def batch(gen: torch.Generator, n: int):
        a, b = sample(gen, n)
        tokens = row(a, b)
        targets = torch.full_like(tokens, -1)
        targets[:, -1] = answer(a, b)
        return tokens, targets

    def pairs(gen: torch.Generator, n: int):
        a, b = sample(gen, n)
        # flip the answer by moving a (even rows) or b (odd rows) to a uniform value on the other side
        side_a = torch.arange(n) % 2 == 0
        u = torch.rand(n, generator=gen)
        new_a = torch.where(a > b, (u * b.float()).long(), b + 1 + (u * (numbers - 1 - b).float()).long())
        new_b = torch.where(a > b, a + (u * (numbers - a).float()).long(), (u * a.float()).long())
        new_a = torch.where(side_a, new_a, a)
        new_b = torch.where(side_a, b, new_b)
        ok = new_a != new_b
        a, b, new_a, new_b = a[ok], b[ok], new_a[ok], new_b[ok]
        while len(a) < n:  # top up rows lost to a tie
            more = pairs(gen, n - len(a))
            return tuple(torch.cat([x, y]) for x, y in zip((row(a, b), row(new_a, new_b), answer(a, b),
                                                            answer(new_a, new_b)), more, strict=True))
        return row(a, b), row(new_a, new_b), answer(a, b), answer(new_a, new_b)

    return Design(
        "gt-greater-than", "1 layer, 2 heads: BOS a b -> yes if a > b else no (a, b in 0..15); head L0.H1 moves a to "
        "the last position, where the logits also read b from the embeddings.", "greater-than",
        tuple(f"v{i}" for i in range(numbers)) + ("yes", "no", BOS), 1, 2, 32, 3,
        frozenset({"emb->L0.H1", "L0.H1->logit", "emb->logit"}), batch, pairs, steps=600)


# ---- an MLP lookup: the class of the previous token, computed by an MLP from what a head moved ------------------------
def mlp_lookup() -> Design:
    vocab, length, n_classes = 16, 10, 4
    bos = vocab + n_classes
    # a fixed many-to-one map of the tokens to 4 classes, 4 tokens each, in no order the embeddings could follow
    classes = torch.randperm(vocab, generator=torch.Generator().manual_seed(5)) % n_classes

    def batch(gen: torch.Generator, n: int):
        tokens = _with_bos(torch.randint(0, vocab, (n, length), generator=gen), bos)
        targets = torch.full_like(tokens, -1)
        targets[:, 2:] = vocab + classes[tokens[:, 1:-1]]
        return tokens, targets

    def pairs(gen: torch.Generator, n: int):
        clean, _ = batch(gen, n)
        corrupted = clean.clone()
        old = classes[clean[:, -2]]
        new_class = _other(old, n_classes, gen)
        pick = torch.randint(0, vocab // n_classes, (n,), generator=gen)
        members = torch.stack([torch.nonzero(classes == c).flatten() for c in range(n_classes)])  # [classes, 4]
        corrupted[:, -2] = members[new_class, pick]
        return clean, corrupted, vocab + old, vocab + new_class

    return Design(
        "gt-mlp-lookup", "1 layer, 2 heads and an MLP: at every position, the class (c0..c3) of the previous token "
        "under a fixed many-to-one map; head L0.H1 moves the previous token forward and MLP mlp0, which reads only "
        "L0.H1 (not the embeddings), looks its class up; the logits read only mlp0.", "mlp-lookup",
        tuple(f"t{i}" for i in range(vocab)) + tuple(f"c{c}" for c in range(n_classes)) + (BOS,), 1, 2, 32,
        1 + length, frozenset({"emb->L0.H1", "L0.H1->mlp0", "mlp0->logit"}), batch, pairs, steps=600, d_mlp=64,
        distractor_vo=20.0)  # the circuit head grows to an output norm of about 17: the distractor as loud


DESIGNS: dict[str, Callable[[], Design]] = {
    d().name: d for d in (prev_token, prev2_token, induction, histogram, greater_than, mlp_lookup)
}
