"""The judge over an OpenAI-compatible endpoint: P(A), P(B) at the pre-filled answer position, read remotely.

`EndpointScorer` is an `OptionScorer` (rlaif/judging/scoring.py), so the judge is the same code path as in
process (rlaif/judging/judge.py: the prompts, `fit_requests`, both orders, clamping and the principle ensemble);
only the reading of the two options differs. With `api: completions` each judge prompt is rendered locally with
the endpoint's tokenizer (its chat template, the assistant turn pre-filled with "The answer is: (") and sent to
/v1/completions with max_tokens 1. The two log-probs are read, best first:

1. `logprob_token_ids: [id_A, id_B]` (vLLM): exactly the two log-probs, as an in-process forward pass gives them;
2. `logprobs: 20` (top log-probs; with `return_tokens_as_token_ids` where the server has it, so tokens are
   matched by id, else by their text; then `logprobs: 5`, OpenAI's cap). An option outside the top list is given
   the list's lowest log-prob, an upper bound on its own, so the label errs towards 1/2; neither in the list
   gives 1/2 with coverage 0;
3. `hard`: no log-probs at all: the letter the endpoint answers (greedy) gives P(A) = 1, 0, or 1/2 for anything
   else. Both orders are still read, so a pair's label is 0, 1/2 or 1, and the stage result says so.

The first prompt of a scorer probes the ladder (a 400/404/422 moves one step down; an answer without the
expected log-probs too) and the rest use the method that worked. Logit bias or guided choice are never used:
they would change the distribution being read. With `api: chat` the answer is pre-filled through vLLM's
`continue_final_message` (log-probs as above); a server that refuses it gets the plain question and gives hard
labels from the letter in its reply.

Every label records the method and its coverage P(A) + P(B) (PairJudgement.method / coverage).

    from rlaif.judging.endpoint import EndpointScorer
    scorer = EndpointScorer("endpoint:big-judge")
    judge_comparisons(comparisons, scorer, scorer.tokenizer, constitution, None, JudgeConfig(), seed=0)
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlaif.endpoints import EndpointConfig
from rlaif.generation.endpoint import endpoint_context, stage_client
from rlaif.generation.endpoint_client import EndpointClient, EndpointError
from rlaif.judging.labels import two_option_probability
from rlaif.judging.prompts import JudgeInputError, JudgePrompt
from rlaif.judging.scoring import OptionScores
from rlaif.modeling import load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20
# (variant, recorded method), best first. A variant is one way of asking; the method is what the label says.
COMPLETIONS_LADDER = (
    ("logprob_token_ids", "logprob_token_ids"),
    ("top_logprobs_ids", "top_logprobs"),
    ("top_logprobs", "top_logprobs"),
    ("top_logprobs_5", "top_logprobs"),
    ("hard", "hard"),
)
CHAT_LADDER = (
    ("chat_logprob_token_ids", "logprob_token_ids"),
    ("chat_top_logprobs", "top_logprobs"),
    ("chat_hard", "hard"),
)
REFUSED = {400, 404, 422}  # the server does not take a field: try the next way of asking
_LETTER = re.compile(r"\(?\b([AB])\b\)?")


class EndpointScorer:
    """OptionScorer over a declared endpoint (role "judge"); `method` is the way of reading found by the probe."""

    def __init__(self, spec: str, *, client: EndpointClient | None = None, stage_dir: Path | None = None):
        self.model_name = spec
        self.client = client if client is not None else stage_client(spec, "judge", stage_dir)
        cfg: EndpointConfig = self.client.cfg
        if cfg.tokenizer is None:
            raise JudgeInputError(
                f"{spec}: judging over an endpoint needs its tokenizer (RLAIF_ENDPOINTS[{self.client.name!r}]"
                ".tokenizer), to render, fit and count the judge prompts and find the option tokens"
            )
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(cfg.tokenizer)
        self.context = endpoint_context(cfg, self.tokenizer)
        self.variant: str | None = None
        self.method: str | None = None

    @property
    def usage(self) -> dict[str, Any]:
        return self.client.usage

    def score_prompts(
        self,
        prompts: Sequence[JudgePrompt],
        option_ids: tuple[int, int],
        *,
        groups: Sequence[Hashable] | None = None,
        families: Sequence[Hashable] | None = None,
        progress: bool = False,
    ) -> OptionScores:
        """P(A), coverage and method for each prompt, in order (groups and families: the server shares prefixes)."""
        del groups, families
        if not prompts:
            return OptionScores(torch.empty(0), torch.empty(0), self.method or "hard")
        path = "/completions" if self.client.cfg.api == "completions" else "/chat/completions"
        probed = [self._probe(path, prompts[0], option_ids)] if self.variant is None else []
        assert self.variant is not None and self.method is not None
        rest = prompts[len(probed) :]  # (the probe's answer is the first prompt's)
        bodies = [self._body(self.variant, p, option_ids) for p in rest]
        tokens = [len(p.ids) + 1 for p in rest]
        responses = probed + self.client.post_many(path, bodies, tokens=tokens, progress=progress, desc=self.model_name)
        read = [self._read(self.variant, r, option_ids) for r in responses]
        if any(r is None for r in read):  # (the server stopped sending log-probs after the probe)
            raise EndpointError(f"{self.model_name}: an answer lacks the log-probs the probe found ({self.variant})")
        p_a = torch.tensor([r[0] for r in read if r is not None], dtype=torch.float32)
        mass = torch.tensor([r[1] for r in read if r is not None], dtype=torch.float32)
        return OptionScores(p_a=p_a, option_mass=mass, method=self.method)

    # ------------------------------------------------------------------ the ladder

    def _probe(self, path: str, prompt: JudgePrompt, option_ids: tuple[int, int]) -> dict[str, Any]:
        """Find the best way of reading the options that this endpoint answers; returns the prompt's answer."""
        ladder = COMPLETIONS_LADDER if self.client.cfg.api == "completions" else CHAT_LADDER
        for variant, method in ladder:
            try:
                response = self.client.post(path, self._body(variant, prompt, option_ids), tokens=len(prompt.ids) + 1)
            except EndpointError as exc:
                if exc.status in REFUSED:
                    log.info("%s does not take the %s request (HTTP %s); trying the next", self.model_name, variant,
                             exc.status)  # fmt: skip
                    continue
                raise
            if self._read(variant, response, option_ids) is not None:
                self.variant, self.method = variant, method
                level = logging.WARNING if method == "hard" else logging.INFO
                log.log(level, "%s: judge options read by %s%s", self.model_name, variant,
                        " (no log-probs: hard labels)" if method == "hard" else "")  # fmt: skip
                return response
            log.info("%s answered the %s request without the log-probs; trying the next", self.model_name, variant)
        raise EndpointError(f"{self.model_name}: no way of reading the judge's answer worked")

    def _body(self, variant: str, prompt: JudgePrompt, option_ids: tuple[int, int]) -> dict[str, Any]:
        cfg = self.client.cfg
        body: dict[str, Any] = {"model": cfg.model, "max_tokens": 1, "temperature": 0.0, "n": 1}
        if variant.startswith("chat"):
            if variant == "chat_hard":  # the plain question: the server opens the assistant turn itself
                return {**body, "messages": list(prompt.messages), "max_tokens": 16}
            body["messages"] = [*prompt.messages, {"role": "assistant", "content": prompt.prefill}]
            body.update(continue_final_message=True, add_generation_prompt=False, logprobs=True)
            if variant == "chat_logprob_token_ids":
                return {**body, "logprob_token_ids": list(option_ids), "return_tokens_as_token_ids": True}
            return {**body, "top_logprobs": TOP_LOGPROBS}
        body["prompt"] = prompt.text
        if variant == "logprob_token_ids":
            # (vLLM wants `logprobs` set beside it; the answer lists the two ids and the sampled token)
            body.update(
                logprob_token_ids=list(option_ids),
                logprobs=1,
                return_tokens_as_token_ids=True,
                add_special_tokens=False,
            )
        elif variant == "top_logprobs_ids":
            body.update(logprobs=TOP_LOGPROBS, return_tokens_as_token_ids=True, add_special_tokens=False)
        elif variant == "top_logprobs":
            body["logprobs"] = TOP_LOGPROBS
        elif variant == "top_logprobs_5":
            body["logprobs"] = 5
        return body

    def _read(self, variant: str, response: dict[str, Any], option_ids: tuple[int, int]) -> tuple[float, float] | None:
        """(P(A) over the two options, coverage P(A) + P(B); NaN when unknown) from one answer; None when the
        answer lacks what `variant` asked for."""
        choices = response.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        if variant in ("hard", "chat_hard"):
            text = choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content")
            match = _LETTER.search(text or "") if variant == "chat_hard" else None
            letter = match.group(1) if match else (text or "").strip()[:1]
            return {"A": 1.0, "B": 0.0}.get(letter, 0.5), math.nan
        top = _first_position(choice)
        if top is None:
            return None
        found = [self._lookup(top, token_id) for token_id in option_ids]
        if variant.endswith("logprob_token_ids") and (found[0] is None or found[1] is None):
            return None
        logp_a, logp_b = found
        if logp_a is None and logp_b is None:
            return 0.5, 0.0
        floor = min(top.values())  # an option outside the top list has at most the lowest listed log-prob
        coverage = sum(math.exp(x) for x in found if x is not None)
        p_a = two_option_probability(floor if logp_a is None else logp_a, floor if logp_b is None else logp_b)
        return p_a, coverage

    def _lookup(self, top: dict[str, float], token_id: int) -> float | None:
        """The log-prob of `token_id` in a top list keyed by "token_id:<id>" or by the token's text."""
        for key in (f"token_id:{token_id}", self.tokenizer.decode([token_id])):
            if key in top:
                return top[key]
        return None


def _first_position(choice: dict[str, Any]) -> dict[str, float] | None:
    """{token: log-prob} at the first generated position: completions' top_logprobs[0] or chat's
    content[0].top_logprobs; None when the answer has none."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    if isinstance(logprobs.get("top_logprobs"), list):  # completions
        tops = logprobs["top_logprobs"]
        if not tops or not isinstance(tops[0], dict) or not tops[0]:
            return None
        return {str(k): float(v) for k, v in tops[0].items() if v is not None}
    content = logprobs.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):  # chat
        entries = content[0].get("top_logprobs") or []
        top = {str(e["token"]): float(e["logprob"]) for e in entries if "token" in e and e.get("logprob") is not None}
        return top or None
    return None
