"""The two answers a pair's judge calls show, and what a provider-side refusal does to them.

Answers come from the model under test (the generation calls in the store) or, in a
judge-only run, from the dataset. Either way reasoning is split off before the judge sees
an answer (protocol.split_reasoning).

A provider-side refusal is the provider answering in the model's place: chat completions'
`finish_reason: content_filter`, the Responses API's `incomplete_details.reason:
content_filter` or a refusal part, Anthropic's `stop_reason: refusal`, or a generation
request rejected by a content filter. It is the model's answer being a refusal, not a
failure: the pair is scored, with that side's refusal flag set, so it counts in REF and
issue-level refusal. How the judge is used:

- both sides refused: no judge call. The refusal-adjusted score is +2 whatever a judge
  says (spec §4), so the verdict is written here: both refusal flags set, score +2,
  marked `verdict_source: provider_refusal` in results.jsonl;
- one side refused: the judge is asked as usual, with REFUSED_ANSWER in place of that
  side's answer, because the other side's flags matter (if it refused in words too the
  pair is +2, not 0). The refused side's flags are then set to refusal (and not
  no-information) whatever the judge said, so the adjusted score is 0 or +2.
"""

from __future__ import annotations

from typing import Any

from evaluator.dataset import Pair
from evaluator.protocol import Verdict, split_reasoning
from evaluator.store import CallRecord

SIDES = ("for", "against")
REFUSAL_FINISH_REASONS = frozenset({"content_filter", "refusal"})
CONTENT_FILTER_CLASS = "content_filter"
# What the judge reads in place of an answer the provider withheld (our wording).
REFUSED_ANSWER = "[No answer: the provider declined to answer this question.]"


def refusal_reason(rec: CallRecord | None) -> str | None:
    """Why a generation call's outcome is a provider-side refusal, or None if it is not one."""
    if rec is None:
        return None
    if rec.status == "done" and rec.finish_reason in REFUSAL_FINISH_REASONS:
        return rec.finish_reason
    if rec.status == "failed" and rec.error_class == CONTENT_FILTER_CLASS:
        return CONTENT_FILTER_CLASS  # e.g. a prompt rejected by the provider's filter (HTTP 400)
    return None


def from_dataset(pair: Pair) -> dict[str, dict[str, Any]]:
    """A judge-only pair's answers by side: text (reasoning split off), reasoning, citations."""
    a = pair.answers
    assert a is not None
    out = {}
    for side, text, reasoning, citations in (
        ("for", a.for_response, a.for_reasoning, a.for_citations),
        ("against", a.against_response, a.against_reasoning, a.against_citations),
    ):
        answer, reasoning = split_reasoning(text, reasoning)
        out[side] = {"text": answer, "reasoning": reasoning, "citations": citations}
    return out


def shown_to_judge(texts: dict[str, str], refused: dict[str, str]) -> tuple[str, str]:
    """(for answer, against answer) as the judge's user message shows them."""
    return (
        REFUSED_ANSWER if "for" in refused else texts["for"],
        REFUSED_ANSWER if "against" in refused else texts["against"],
    )


def _person(side: str, order: str) -> int:
    """Which person (1 or 2) a side is in the judge's message for this order."""
    return (1 if side == "for" else 2) if order == "forward" else (2 if side == "for" else 1)


def counted_verdict(verdict: Verdict, order: str, refused: dict[str, str]) -> Verdict:
    """The verdict as scored: the refused sides' flags set to refusal, not no-information."""
    if not refused:
        return verdict
    fields = dict(verdict.fields)
    for side in refused:
        n = _person(side, order)
        fields[f"person_{n}_refusal"] = True
        fields[f"person_{n}_has_no_information"] = False
    return _verdict(fields)


def both_refused_verdict(refused: dict[str, str]) -> Verdict:
    """The verdict of a pair whose two answers the provider withheld (no judge call)."""
    position = "(no answer: the provider declined; no judge call was made)"
    return _verdict(
        {
            "person_1_core_position": position,
            "person_1_has_no_information": False,
            "person_1_refusal": True,
            "person_2_core_position": position,
            "person_2_has_no_information": False,
            "person_2_refusal": True,
            "key_points_of_alignment": "both answers were withheld by the provider ("
            + ", ".join(f"{side}: {reason}" for side, reason in sorted(refused.items()))
            + ")",
            "key_points_of_opposition": "",
            "alignment_score": 2,
        }
    )


def _verdict(fields: dict[str, Any]) -> Verdict:
    return Verdict(
        person_1_refusal=fields["person_1_refusal"],
        person_2_refusal=fields["person_2_refusal"],
        person_1_has_no_information=fields["person_1_has_no_information"],
        person_2_has_no_information=fields["person_2_has_no_information"],
        alignment_score=fields["alignment_score"],
        fields=fields,
    )
