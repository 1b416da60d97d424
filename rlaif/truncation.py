"""Long items fit the model's context by a documented cut, so one long item never sinks a stage.

The rule, the same in every stage (critique-revise, pairs, judge, evaluation, `rlaif judge-eval`):

- What is cut: the *item's own texts*. For a generation prompt, the contents of every message but the last
  (the user's prompt, the answer, the critique); the last message is the instruction being answered (the critique
  or revision request) and stays whole, unless it is the only message, the user's prompt itself. For a judge
  prompt, the human prompt and the two responses; the principle's question, the option labels, the few-shot
  examples and the answer prefix stay whole.
- How: the *middle* of a text is replaced by `MARKER`, so its beginning and its end stay visible (the end of a
  response is where it refuses, complies or trails off). The longest texts are cut first ("water-filling"):
  shorter texts are left alone and the cut ones end up about equally long, never below `MIN_KEEP` tokens.
- Both orders of a judge prompt show the same cut texts, so the position-debiasing still compares like with like.
- When the parts that are never cut do not fit on their own (a config problem: max_new_tokens, few-shot examples
  or judge.max_length), the item cannot fit at all and `ContextOverflow` says which limit to change; then no
  item of the stage fits either, so the stage fails with that reason.

Which items were cut is reported by each stage: `LongItems` in its StageResult (`extra["long_items"]`), the run's
events and the evaluation report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MARKER = " [...] "
MIN_KEEP = 8  # tokens kept of a cut text: 4 from its start, 4 from its end
MAX_LISTED_IDS = 200  # ids listed in a stage result / event; the counts are always complete
_ATTEMPTS = 6  # re-tokenising a cut text can differ by a few tokens at the joins: measure again and cut a bit more


class ContextOverflow(ValueError):
    """An item cannot fit even with its own texts cut to the minimum: the fixed parts exceed the limit."""


class LongItems(BaseModel):
    """Items of a stage whose texts were cut to fit the context (ids listed up to MAX_LISTED_IDS)."""

    truncated: int = Field(default=0, description="Items whose prompt or responses were cut to fit.")
    truncated_ids: list[str] = Field(default_factory=list, description="Their ids (at most 200 listed).")
    skipped: int = Field(default=0, description="Items left out because even cut they could not fit.")
    skipped_ids: list[str] = Field(default_factory=list, description="Their ids (at most 200 listed).")

    @classmethod
    def of(cls, truncated: Sequence[str], skipped: Sequence[str] = ()) -> LongItems:
        truncated, skipped = list(dict.fromkeys(truncated)), list(dict.fromkeys(skipped))
        return cls(
            truncated=len(truncated),
            truncated_ids=truncated[:MAX_LISTED_IDS],
            skipped=len(skipped),
            skipped_ids=skipped[:MAX_LISTED_IDS],
        )

    def summary(self) -> str:
        """One line for logs and events, e.g. '3 truncated to fit the context (a, b, c)'."""
        parts = []
        for count, ids, what in (
            (self.truncated, self.truncated_ids, "truncated to fit the context"),
            (self.skipped, self.skipped_ids, "skipped (too long even when cut)"),
        ):
            if count:
                shown = ", ".join(ids[:10]) + (", ..." if count > 10 else "")
                parts.append(f"{count} {what} ({shown})")
        return "; ".join(parts) or "none"


def water_fill(lengths: Sequence[int], remove: int, floor: int = MIN_KEEP) -> list[int]:
    """New lengths removing `remove` tokens, longest first, none below `floor` (nor below its own length).

    lengths [100, 10, 60], remove 70, floor 8 -> the level L with (100-L) + (60-L) = 70 is L = 45: [45, 10, 45].
    """
    new = list(lengths)
    left = remove
    while left > 0:
        top = max(new)
        if top <= floor:
            break
        tallest = [i for i, n in enumerate(new) if n == top]
        below = max([n for n in new if n < top] + [floor])
        step = min(top - below, -(-left // len(tallest)))  # lower every tallest text by the same amount
        for i in tallest:
            cut = min(step, left, new[i] - floor)
            new[i] -= cut
            left -= cut
            if left == 0:
                break
    return new


def cut_middle(tokenizer: PreTrainedTokenizerBase, text: str, keep: int) -> str:
    """`text` with its middle replaced by MARKER so that about `keep` of its tokens remain (head and tail halves)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= keep:
        return text
    head = (keep + 1) // 2
    tail = keep - head
    start = tokenizer.decode(ids[:head], skip_special_tokens=True).rstrip()
    end = tokenizer.decode(ids[len(ids) - tail :], skip_special_tokens=True).lstrip() if tail else ""
    return f"{start}{MARKER}{end}"


def fit_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    measure: Callable[[Sequence[str]], int],
    limit: int,
    what: str,
) -> tuple[list[str], bool]:
    """(texts, cut?) such that measure(texts) <= limit, cutting the texts' middles longest first.

    `measure` returns the token length of the whole prompt built from the texts (for a generation prompt, plus
    max_new_tokens). ContextOverflow, naming `what`, when the texts cut to MIN_KEEP still do not fit.
    """
    current = list(texts)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in current]
    total = measure(current)
    if total <= limit:
        return current, False
    slack = 0
    for _ in range(_ATTEMPTS):
        overflow = total - limit
        # The marker costs a few tokens of its own in every cut text.
        target = water_fill(lengths, overflow + slack + 4 * len(lengths))
        if target == lengths:
            break
        current = [
            cut_middle(tokenizer, t, n) if n < old else t for t, n, old in zip(current, target, lengths, strict=True)
        ]
        lengths = target
        total = measure(current)
        if total <= limit:
            return current, True
        slack += 8
    raise ContextOverflow(
        f"{what}: even with its texts cut to {MIN_KEEP} tokens each it needs {total} tokens, more than the limit "
        f"of {limit}; the parts that are never cut (instructions, few-shot examples, max_new_tokens) are too long"
    )


def fit_conversation(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Sequence[dict[str, str]],
    max_new_tokens: int,
    context: int,
    what: str,
) -> tuple[list[dict[str, str]], bool]:
    """(conversation, cut?) whose chat-templated prompt plus `max_new_tokens` fits `context` tokens."""
    messages = [dict(m) for m in conversation]
    cuttable = list(range(len(messages) - 1)) if len(messages) > 1 else [0]

    def build(texts: Sequence[str]) -> list[dict[str, str]]:
        out = [dict(m) for m in messages]
        for index, text in zip(cuttable, texts, strict=True):
            out[index]["content"] = text
        return out

    def measure(texts: Sequence[str]) -> int:
        rendered = tokenizer.apply_chat_template(build(texts), add_generation_prompt=True, tokenize=False)
        return len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) + max_new_tokens

    texts, cut = fit_texts(tokenizer, [messages[i]["content"] for i in cuttable], measure, context, what)
    return build(texts), cut
