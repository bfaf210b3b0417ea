"""Reber-grammar strings (the sparse-RNN thesis' task): classify valid vs invalid strings.

Valid strings are random walks through the Reber graph (each branch taken with probability ½);
``embedded: true`` (default) wraps one in ``B T … T E`` or ``B P … P E``, so the second symbol
must be matched by the second-to-last one, a long-range dependency.

Invalid-string generator (it sets the difficulty): take a fresh valid string, replace the
symbol at one uniformly drawn *interior* position (never the first ``B`` or the last ``E``) by
another uniformly drawn symbol of the Reber alphabet {B, E, P, S, T, V, X}, and redraw until the
result is rejected by the grammar. Negatives thus have the positives' length distribution and
alphabet and differ from a valid string in one symbol — unlike the thesis' data, where 56 % of
negatives contained foreign letters. Exactly ``size // 2`` strings are valid, shuffled; the last
``test_size`` form the test split. Tokens are 1…7 (0 pads on the right).
"""
from __future__ import annotations

import random
from typing import Any

import torch

ALPHABET = "BEPSTVX"
TOKEN = {c: i + 1 for i, c in enumerate(ALPHABET)}  # 0 is the pad token
# The Reber graph: state -> [(symbol, next state)]; state 6 emits the final E.
GRAPH: dict[int, list[tuple[str, int]]] = {
    0: [("B", 1)], 1: [("T", 2), ("P", 3)], 2: [("S", 2), ("X", 4)], 3: [("T", 3), ("V", 5)],
    4: [("X", 3), ("S", 6)], 5: [("P", 4), ("V", 6)], 6: [("E", -1)],
}


def plain(rng: random.Random) -> str:
    state, out = 0, []
    while state != -1:
        sym, state = rng.choice(GRAPH[state])
        out.append(sym)
    return "".join(out)


def valid_string(rng: random.Random, embedded: bool) -> str:
    if not embedded:
        return plain(rng)
    c = rng.choice("TP")
    return f"B{c}{plain(rng)}{c}E"


def accepts_plain(s: str) -> bool:
    state = 0
    for sym in s:
        nxt = dict(GRAPH.get(state, []))
        if sym not in nxt:
            return False
        state = nxt[sym]
    return state == -1


def accepts(s: str, embedded: bool = True) -> bool:
    """Whether ``s`` belongs to the (embedded) Reber language."""
    if not embedded:
        return accepts_plain(s)
    return (len(s) >= 4 and s[0] == "B" and s[-1] == "E" and s[1] in "TP" and s[-2] == s[1]
            and accepts_plain(s[2:-2]))


def corrupt(s: str, rng: random.Random, embedded: bool) -> str:
    """One in-alphabet substitution at an interior position, redrawn until the grammar rejects it."""
    while True:
        i = rng.randrange(1, len(s) - 1)
        t = s[:i] + rng.choice([c for c in ALPHABET if c != s[i]]) + s[i + 1:]
        if not accepts(t, embedded):
            return t


def strings(size: int, seed: int, embedded: bool = True, max_len: int = 53) -> tuple[list[str], list[int]]:
    """``size`` strings, exactly ``size // 2`` valid (label 1), shuffled, all at most ``max_len`` long."""
    rng = random.Random(seed)

    def draw() -> str:
        while True:
            s = valid_string(rng, embedded)
            if len(s) <= max_len:
                return s

    n_valid = size // 2
    items = [(draw(), 1) for _ in range(n_valid)] + [(corrupt(draw(), rng, embedded), 0) for _ in range(size - n_valid)]
    rng.shuffle(items)
    return [s for s, _ in items], [y for _, y in items]


def encode(texts: list[str], width: int | None = None) -> torch.Tensor:
    """Token ids ``[N, width]`` (default: the longest string), right-padded with 0."""
    out = torch.zeros(len(texts), width or max(map(len, texts)), dtype=torch.long)
    for i, s in enumerate(texts):
        out[i, : len(s)] = torch.tensor([TOKEN[c] for c in s])
    return out


def generate(cfg: Any) -> dict[str, Any]:
    from sparse_run.config.errors import number

    size = number(cfg.size, "dataset.size", lo=4, integer=True)
    test = number(cfg.test_size, "dataset.test_size", lo=1, hi=size - 1, integer=True)
    min_len = 9 if cfg.embedded else 5
    max_len = number(cfg.max_len, "dataset.max_len", lo=min_len, integer=True)
    texts, labels = strings(size, int(cfg.seed), bool(cfg.embedded), max_len)
    x, y = encode(texts, int(max_len)), torch.tensor(labels, dtype=torch.long)
    return {"train_x": x[:-test], "train_y": y[:-test], "test_x": x[-test:], "test_y": y[-test:],
            "vocab_size": len(ALPHABET) + 1}
