"""The judge's multiple-choice prompt, rendered through the chat template of an instruct model.

Layout (Bai et al. 2022 sec. 4.1, in chat form). The user turn holds the conversation, the principle's
comparison question and the two options; the assistant turn is *pre-filled* with "The answer is: (" and left open:

    <|im_start|>user
    Consider the following conversation between a human and an assistant.

    Human: <prompt>

    <comparison question>
    Options:
    (A) <first response>
    (B) <second response>

    Reply with (A) or (B).<|im_end|>
    <|im_start|>assistant
    The answer is: (          <- the last token; the next-token distribution here is the answer

Why the letter after "(" and not the strings " (A)" / " (B)": BPE tokenizers split " (A)" into [" (", "A", ")"],
so the *first* token of both options is the same " (" and carries no information, and scoring the whole string
takes three positions. Pre-filling the "(" puts the one token that differs, the letter, at a single position, so
one forward pass gives both options' log-probabilities, directly comparable. `option_token_ids` checks that the
letter really is one separate token after the pre-fill for the tokenizer at hand and refuses otherwise.

Pre-filling the assistant turn (instead of appending "The answer is:" to the user turn) matters for a chat
model: after the generation prompt the model is in its "answering" state, which is where it was trained to commit.

Few-shot comparison examples go before the question as earlier user/assistant turns, each answered
"The answer is: (X)". Example i puts the better response at (B) when i is even and at (A) when it is odd, so a
single example does not teach "(A)" on top of the model's own first-position bias.

Chain of thought: the user turn asks for step-by-step reasoning; the judge's generated reasoning is pre-filled
into the assistant turn, cut before any answer it already wrote, followed by "So the answer is: (".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from rlaif.constitution import ComparisonExample, Principle

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rlaif.generation import Conversation

ANSWER_PREFIX = "The answer is: ("
COT_ANSWER_PREFIX = "So the answer is: ("
OPTION_LETTERS = ("A", "B")

INSTRUCTION = "Reply with (A) or (B)."
COT_INSTRUCTION = "Think step by step about which response is better, then give your answer as (A) or (B)."

# Where a generated chain of thought already states an answer; everything from here on is replaced by our prefix.
_ANSWER_STATED = re.compile(r"(?:so,?\s+)?(?:the\s+)?(?:final\s+)?answer\s+is\b", re.IGNORECASE)


class JudgePrompt(NamedTuple):
    """One judge prompt, in every form a scorer may need.

    messages: the chat turns (few-shot turns, the question), without the assistant turn;
    prefill:  what the assistant turn is pre-filled with ("The answer is: (", after the reasoning with CoT);
    text:     messages rendered with the chat template, the assistant turn opened and pre-filled (not closed);
    ids:      the text's token ids (no special tokens added: the template wrote them).
    """

    messages: Conversation
    prefill: str
    text: str
    ids: list[int]


class JudgeInputError(ValueError):
    """A comparison cannot be judged as given (empty prompt, too long for the judge, unusable tokenizer)."""


def user_message(prompt: str, first: str, second: str, question: str, chain_of_thought: bool = False) -> str:
    """The judge's user turn: conversation, comparison question, options (A) and (B), instruction."""
    instruction = COT_INSTRUCTION if chain_of_thought else INSTRUCTION
    return (
        "Consider the following conversation between a human and an assistant.\n\n"
        f"Human: {prompt.strip()}\n\n"
        f"{question.strip()}\n"
        "Options:\n"
        f"(A) {first.strip()}\n"
        f"(B) {second.strip()}\n\n"
        f"{instruction}"
    )


def judge_messages(
    prompt: str,
    first: str,
    second: str,
    principle: Principle,
    examples: Sequence[ComparisonExample] = (),
    chain_of_thought: bool = False,
) -> Conversation:
    """Chat messages of one judge prompt: few-shot example turns, then the question (no assistant turn yet)."""
    messages: Conversation = []
    for index, example in enumerate(examples):
        better_at_b = index % 2 == 0
        a, b = (example.worse, example.better) if better_at_b else (example.better, example.worse)
        messages.append({"role": "user", "content": user_message(example.prompt, a, b, principle.comparison)})
        messages.append({"role": "assistant", "content": f"{ANSWER_PREFIX}{'B' if better_at_b else 'A'})"})
    messages.append(
        {"role": "user", "content": user_message(prompt, first, second, principle.comparison, chain_of_thought)}
    )
    return messages


def trim_reasoning(reasoning: str) -> str:
    """Generated reasoning up to (not including) any answer it already states, whitespace-trimmed."""
    match = _ANSWER_STATED.search(reasoning)
    return (reasoning[: match.start()] if match else reasoning).strip()


def assistant_prefill(reasoning: str | None = None) -> str:
    """What the assistant turn is pre-filled with: the answer prefix, after the trimmed reasoning in CoT mode."""
    if reasoning is None:
        return ANSWER_PREFIX
    kept = trim_reasoning(reasoning)
    return f"{kept}\n{COT_ANSWER_PREFIX}" if kept else COT_ANSWER_PREFIX


def render_judge_text(tokenizer: PreTrainedTokenizerBase, messages: Conversation, prefill: str) -> str:
    """The chat-templated judge prompt with the assistant turn opened and pre-filled (not closed)."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{rendered}{prefill}"


def encode_judge_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a rendered prompt. The template already wrote any BOS/special tokens, so none are added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def option_token_ids(tokenizer: PreTrainedTokenizerBase, prefix: str = ANSWER_PREFIX) -> tuple[int, int]:
    """Ids of the letters "A" and "B" as the next token after `prefix`; JudgeInputError if they are not one token."""
    base = encode_judge_text(tokenizer, prefix)
    ids: list[int] = []
    for letter in OPTION_LETTERS:
        extended = encode_judge_text(tokenizer, prefix + letter)
        if len(extended) != len(base) + 1 or extended[: len(base)] != base:
            raise JudgeInputError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} does not give {letter!r} as one separate token "
                f"after {prefix!r} ({base} -> {extended}); the judge cannot read the option from one position"
            )
        ids.append(extended[-1])
    if ids[0] == ids[1]:
        raise JudgeInputError(f"options A and B map to the same token id {ids[0]}")
    return ids[0], ids[1]
