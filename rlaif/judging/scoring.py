"""Read the option log-probabilities at the last token of many judge prompts: one forward pass per batch.

Levers (measured in bench/bench_judge.py):

- Length-sorted batches: prompts are sorted by token count before batching, so a batch pads little. Padding is on
  the right; each row's answer position is its own last real token.
- Shared prefixes, two levels. A *group* (e.g. all prompts of one principle, whose few-shot turns are identical)
  starts with the same tokens: that prefix runs once, batch 1, and its keys/values are broadcast to every batch of
  the group (and kept in a small LRU `PrefixCache` across calls). Within a group, a *family* (the two orders of one
  pair) also shares the conversation and the question up to "(A) ": that middle part runs once per family, then
  each order's suffix (the options and the answer prefix) runs on top of it.
- Only the answer position goes through the LM head: the decoder's hidden states are gathered at each row's last
  token first, so the (hidden x vocab) projection runs on B rows instead of B x T.

With share_prefix=False every prompt runs in full: the reference path the shared one is tested against.

`ModelScorer` puts `score_options` behind the `OptionScorer` protocol, which the judge (rlaif/judging/judge.py)
calls; the other implementation reads the same two probabilities from an endpoint (rlaif/judging/endpoint.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from rlaif.judging.prompts import JudgePrompt

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (batch, kv_heads, T, head_dim)


class OptionLogprobs(NamedTuple):
    """Full-vocabulary log-probabilities of the two option tokens at the answer position.

    logp_a: (N,) float32, log P("A" | prompt), in input order.
    logp_b: (N,) float32, log P("B" | prompt).
    """

    logp_a: torch.Tensor
    logp_b: torch.Tensor

    @property
    def p_a(self) -> torch.Tensor:
        """(N,) P(A) normalised over the two options: softmax over (logp_a, logp_b) = sigmoid(logp_a - logp_b)."""
        return torch.sigmoid(self.logp_a - self.logp_b)

    @property
    def option_mass(self) -> torch.Tensor:
        """(N,) P(A) + P(B) over the full vocabulary: how much the judge answers in the expected format."""
        return self.logp_a.exp() + self.logp_b.exp()


class OptionScores(NamedTuple):
    """What a scorer read at the answer position of N judge prompts.

    p_a:         (N,) float32, P(A) normalised over the two options (exactly 1, 0 or 1/2 for hard labels).
    option_mass: (N,) float32, P(A) + P(B) over the full vocabulary (the coverage); NaN where it is not known.
    method:      how: "logprobs" (in process), "logprob_token_ids" / "top_logprobs" (endpoint log-probs) or
                 "hard" (an endpoint without log-probs: the answered letter).
    """

    p_a: torch.Tensor
    option_mass: torch.Tensor
    method: str

    @property
    def soft(self) -> bool:
        return self.method != "hard"


@runtime_checkable
class OptionScorer(Protocol):
    """Reads P(A) and P(B) at the answer position of judge prompts: in process (ModelScorer) or over an
    endpoint (rlaif.judging.endpoint.EndpointScorer). `context` is the judge model's context in tokens (None:
    unknown)."""

    context: int | None

    def score_prompts(
        self,
        prompts: Sequence[JudgePrompt],
        option_ids: tuple[int, int],
        *,
        groups: Sequence[Hashable] | None = None,
        families: Sequence[Hashable] | None = None,
        progress: bool = False,
    ) -> OptionScores: ...


class ModelScorer:
    """The in-process scorer: one forward pass per batch of a loaded causal LM (`score_options`)."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        batch_size: int = 8,
        share_prefix: bool = True,
        pad_id: int = 0,
        prefix_cache: PrefixCache | None = None,
    ):
        self.model = model
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        self.pad_id = pad_id
        self.prefix_cache = prefix_cache
        context = getattr(model.config, "max_position_embeddings", None)
        self.context = int(context) if context else None

    def score_prompts(
        self,
        prompts: Sequence[JudgePrompt],
        option_ids: tuple[int, int],
        *,
        groups: Sequence[Hashable] | None = None,
        families: Sequence[Hashable] | None = None,
        progress: bool = False,
    ) -> OptionScores:
        logprobs = score_options(
            self.model,
            [p.ids for p in prompts],
            option_ids,
            batch_size=self.batch_size,
            groups=groups,
            families=families,
            share_prefix=self.share_prefix,
            pad_id=self.pad_id,
            prefix_cache=self.prefix_cache,
            progress=progress,
        )
        return OptionScores(p_a=logprobs.p_a, option_mass=logprobs.option_mass, method="logprobs")


class PrefixCache:
    """Keys/values of recently used group prefixes (batch 1), least recently used dropped first."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, model: PreTrainedModel, prefix: Sequence[int]) -> KV:
        key = tuple(prefix)
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        kv = _run_prefix(model, list(prefix))
        self._entries[key] = kv
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return kv


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix, leaving at least one token in the shortest sequence."""
    if not sequences:
        return 0
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    length = 0
    while length < limit and all(s[length] == first[length] for s in sequences):
        length += 1
    return max(length, 0)


def _run_prefix(model: PreTrainedModel, prefix: list[int]) -> KV:
    """Per-layer (keys, values) of the prefix, batch 1: (1, kv_heads, P, head_dim) each."""
    device = model.device
    out = model.base_model(
        input_ids=torch.tensor([prefix], device=device),
        attention_mask=torch.ones(1, len(prefix), dtype=torch.long, device=device),
        use_cache=True,
    )
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


def _pad_right(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (len(rows), longest): real tokens first, then padding that nothing attends to."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.tensor(list(row), device=device)
            mask[i, : len(row)] = 1
    return ids, mask


def _cache(model: PreTrainedModel, kv: KV) -> object:
    from transformers import DynamicCache

    return DynamicCache(kv, config=model.config)


def _score_batch(
    model: PreTrainedModel,
    group_kv: KV | None,
    group_length: int,
    middles: list[list[int]],
    owners: list[int],
    suffixes: list[list[int]],
    option_ids: tuple[int, int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp_a, logp_b) of one batch: row r = group prefix + middles[owners[r]] + suffixes[r]."""
    device = model.device
    batch, families = len(suffixes), len(middles)
    middle_lengths = torch.tensor([len(middles[o]) for o in owners], device=device)  # (B,)
    past: KV | None = None
    past_mask = torch.ones((batch, group_length), dtype=torch.long, device=device)  # (B, P)
    if any(middles):
        # The family part runs once per family on top of the (broadcast, not copied) group prefix.
        ids, mask = _pad_right(middles, pad_id, device)  # (F, M)
        full_mask = torch.cat([torch.ones((families, group_length), dtype=torch.long, device=device), mask], dim=1)
        positions = torch.arange(group_length, group_length + ids.shape[1], device=device).expand(families, -1)
        cache = (
            _cache(model, [(k.expand(families, -1, -1, -1), v.expand(families, -1, -1, -1)) for k, v in group_kv])
            if group_kv
            else None
        )
        # Attend-to-all here: pads sit after the real tokens, so causality already hides them from real tokens, and
        # a family with an empty middle would otherwise be a fully masked row (NaN keys/values in later layers).
        out = model.base_model(
            input_ids=ids,
            attention_mask=torch.ones_like(full_mask),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        index = torch.tensor(owners, device=device)
        past = [
            (layer.keys.index_select(0, index), layer.values.index_select(0, index))
            for layer in out.past_key_values.layers
        ]
        past_mask = full_mask.index_select(0, index)  # (B, P + M), zeros where a shorter family was padded
    elif group_kv:
        past = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in group_kv]
    ids, mask = _pad_right(suffixes, pad_id, device)  # (B, S)
    # Each row continues at its own true position (after its own family part), whatever the padding.
    positions = group_length + middle_lengths[:, None] + torch.arange(ids.shape[1], device=device)[None, :]  # (B, S)
    hidden = model.base_model(
        input_ids=ids,
        attention_mask=torch.cat([past_mask, mask], dim=1),
        position_ids=positions,
        past_key_values=_cache(model, past) if past else None,
        use_cache=past is not None,
    ).last_hidden_state  # (B, S, H)
    last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
    answer_hidden = hidden[torch.arange(batch, device=device), last]  # (B, H)
    logprobs = model.get_output_embeddings()(answer_hidden).float().log_softmax(dim=-1)  # (B, V)
    return logprobs[:, option_ids[0]], logprobs[:, option_ids[1]]


def _pack(families: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Families (lists of row indices) into batches of at most batch_size rows; a bigger family is split."""
    batches: list[list[list[int]]] = []
    current: list[list[int]] = []
    rows = 0
    for family in families:
        for start in range(0, len(family), batch_size):
            piece = family[start : start + batch_size]
            if rows + len(piece) > batch_size:
                batches.append(current)
                current, rows = [], 0
            current.append(piece)
            rows += len(piece)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def score_options(
    model: PreTrainedModel,
    sequences: Sequence[Sequence[int]],
    option_ids: tuple[int, int],
    *,
    batch_size: int = 8,
    groups: Sequence[Hashable] | None = None,
    families: Sequence[Hashable] | None = None,
    share_prefix: bool = True,
    pad_id: int = 0,
    prefix_cache: PrefixCache | None = None,
    progress: bool = False,
) -> OptionLogprobs:
    """Log-probs of the option tokens after the last token of each sequence, in input order.

    `groups` (one key per sequence) says which sequences share a prefix and may share a batch; `families` (keys
    within a group) which share a second, longer prefix. Sequences are sorted by length so batches are dense.
    """
    n = len(sequences)
    groups = [0] * n if groups is None else groups
    families = list(range(n)) if families is None else families
    if len(groups) != n or len(families) != n:
        raise ValueError(f"groups/families need one key per sequence: {len(groups)}/{len(families)} for {n}")
    for index, sequence in enumerate(sequences):
        if len(sequence) == 0:
            raise ValueError(f"sequence {index} is empty: nothing to score")
    cache = prefix_cache if prefix_cache is not None else PrefixCache()
    logp_a = torch.empty(n, dtype=torch.float32)
    logp_b = torch.empty(n, dtype=torch.float32)
    by_group: dict[Hashable, dict[Hashable, list[int]]] = {}
    for index, (group, family) in enumerate(zip(groups, families, strict=True)):
        by_group.setdefault(group, {}).setdefault(family, []).append(index)
    bar = tqdm(total=n, desc="judge", unit="prompt", disable=not progress)
    for members in by_group.values():
        rows = [i for family in members.values() for i in family]
        group_length = common_prefix_length([sequences[i] for i in rows]) if share_prefix else 0
        group_kv = cache.get(model, sequences[rows[0]][:group_length]) if group_length else None
        ordered = sorted(members.values(), key=lambda family: (max(len(sequences[i]) for i in family), family[0]))
        for batch in _pack(ordered, batch_size):
            middles: list[list[int]] = []
            owners: list[int] = []
            suffixes: list[list[int]] = []
            chunk: list[int] = []
            for family in batch:
                tails = [list(sequences[i][group_length:]) for i in family]
                shared = common_prefix_length(tails) if share_prefix and len(family) > 1 else 0
                middles.append(tails[0][:shared])
                for i, tail in zip(family, tails, strict=True):
                    owners.append(len(middles) - 1)
                    suffixes.append(tail[shared:])
                    chunk.append(i)
            a, b = _score_batch(model, group_kv, group_length, middles, owners, suffixes, option_ids, pad_id)
            logp_a[chunk] = a.float().cpu()
            logp_b[chunk] = b.float().cpu()
            bar.update(len(chunk))
    bar.close()
    return OptionLogprobs(logp_a=logp_a, logp_b=logp_b)
