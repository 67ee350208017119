"""The simulated server, which every other test trusts, checked by code we did not write:
the official `openai` and `anthropic` Python SDKs call it for every endpoint the evaluator
uses. Each answer is validated strictly against the SDK's own type for it (pydantic
`model_validate` of the raw JSON: every required field present and of the right type),
then parsed by the SDK as a user's code would; error answers must raise the SDK's own
exception classes. max_retries=0 everywhere, so an error raises at once."""

from __future__ import annotations

import inspect
import json

import anthropic
import openai
import pytest
from anthropic.types import Message, ModelInfo, ToolUseBlock
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch, FileObject, Model
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from evaluator import protocol
from workers.providers import get_provider

# End to end: real servers, subprocesses and runs of the evaluator (the slow tier).
pytestmark = pytest.mark.slow

KEY = "sk-sdk-conformance-0123456789"
# A judge request the simulated judge recognises: two answers taking opposite sides.
JUDGE_USER = protocol.judge_user_message(
    "Whether cities should ban cars from their centres",
    "Argue that cities should ban cars from their centres.",
    "I agree with the position this question asks me to defend.",
    "Argue that cities should not ban cars from their centres.",
    "I disagree with the position this question asks me to defend.",
)


def _body(provider: str, user: str, judge: bool = False, **options) -> dict:
    """The request body the evaluator itself sends, to be passed to the SDK as keywords."""
    p = get_provider(provider)
    if judge:
        return p.build_body(
            "simulated-judge",
            protocol.DEFAULT_JUDGE_PROMPT,
            user,
            temperature=protocol.JUDGE_TEMPERATURE,
            top_p=protocol.JUDGE_TOP_P,
            max_tokens=protocol.JUDGE_MAX_TOKENS,
            json_schema=protocol.VERDICT_SCHEMA,
            options=options,
        )
    return p.build_body(
        "simulated-model",
        "Answer briefly.",
        user,
        temperature=protocol.GEN_TEMPERATURE,
        top_p=protocol.GEN_TOP_P,
        max_tokens=protocol.GEN_MAX_TOKENS,
        options=options,
    )


def _call(method, body: dict):
    """`method(**body)`, with the body keys the SDK has no parameter for sent as extra_body.

    The anthropic SDK's Messages.create has no `temperature` (several current Claude
    models reject it); the evaluator sends it (workers.anthropic), so it goes as extra_body,
    and the request is still the evaluator's.
    """
    known = inspect.signature(method).parameters
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    return method(**kwargs, **({"extra_body": extra} if extra else {}))


def _strict(model_type, raw):
    """Validate the raw JSON against the SDK's type, then return the SDK's own parse."""
    model_type.model_validate(raw.http_response.json())
    parsed = raw.parse()
    assert isinstance(parsed, model_type)
    return parsed


def _openai(server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0, timeout=30)


def _anthropic(server, key: str = KEY) -> anthropic.Anthropic:
    # The SDK appends /v1/... itself.
    base = server.base_url.removesuffix("/v1")
    return anthropic.Anthropic(api_key=key, base_url=base, max_retries=0, timeout=30)


# -- OpenAI -----------------------------------------------------------------------------


def test_openai_models_chat_json_schema_and_responses(sim_server):
    client = _openai(sim_server())
    raw = client.models.with_raw_response.list()
    for item in raw.http_response.json()["data"]:
        Model.model_validate(item)
    assert {m.id for m in raw.parse()} >= {"simulated-model", "simulated-judge"}

    # Chat completions: a generation, and a judge call with response_format json_schema.
    chat = _strict(
        ChatCompletion,
        _call(client.chat.completions.with_raw_response.create, _body("openai", "Is tea good?")),
    )
    assert (
        chat.choices[0].finish_reason == "stop" and "SIMULATED" in chat.choices[0].message.content
    )
    judged = _strict(
        ChatCompletion,
        _call(client.chat.completions.with_raw_response.create, _body("openai", JUDGE_USER, True)),
    )
    verdict = protocol.parse_verdict(judged.choices[0].message.content)
    # Agreeing with the side asked for, then disagreeing with the other: one position.
    assert verdict.alignment_score == 2
    assert judged.usage.prompt_tokens > 0 and judged.usage.completion_tokens > 0

    # Responses: with reasoning and web search (reasoning items, a web_search_call,
    # url_citation annotations), and a judge call with text.format json_schema.
    gen = _body("openai-responses", "Is tea good?", reasoning_effort="low", web_search=True)
    resp = _strict(Response, _call(client.responses.with_raw_response.create, gen))
    assert resp.status == "completed" and "SIMULATED" in resp.output_text
    assert [item.type for item in resp.output] == ["reasoning", "web_search_call", "message"]
    assert resp.output[-1].content[0].annotations[0].type == "url_citation"
    judged = _strict(
        Response,
        _call(
            client.responses.with_raw_response.create, _body("openai-responses", JUDGE_USER, True)
        ),
    )
    assert protocol.parse_verdict(judged.output_text).alignment_score == 2


@pytest.mark.parametrize(
    "provider, endpoint, answer_type",
    [
        ("openai", "/v1/chat/completions", ChatCompletion),
        ("openai-responses", "/v1/responses", Response),
    ],
)
def test_openai_files_and_batches(sim_server, provider, endpoint, answer_type):
    server = sim_server(batch_delay_s=0.0)
    client = _openai(server)
    lines = [
        {"custom_id": "gen-1", "method": "POST", "url": endpoint, "body": _body(provider, "Q?")},
        {
            "custom_id": "judge-1",
            "method": "POST",
            "url": endpoint,
            "body": _body(provider, JUDGE_USER, True),
        },
    ]
    jsonl = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = _strict(
        FileObject,
        client.files.with_raw_response.create(file=("in.jsonl", jsonl), purpose="batch"),
    )
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl)
    created = _strict(
        Batch,
        client.batches.with_raw_response.create(
            input_file_id=uploaded.id,
            endpoint=endpoint,
            completion_window="24h",
            metadata={"valbench_marker": "abc"},
        ),
    )
    assert created.metadata == {"valbench_marker": "abc"}
    done = _strict(Batch, client.batches.with_raw_response.retrieve(created.id))
    assert done.status == "completed" and done.request_counts.completed == 2
    listed = client.batches.list(limit=1)
    assert [b.id for b in listed.data] == [created.id]
    output = client.files.content(done.output_file_id).text.splitlines()
    by_id = {row["custom_id"]: row for row in map(json.loads, output)}
    assert set(by_id) == {"gen-1", "judge-1"}
    for row in by_id.values():
        assert row["error"] is None and row["response"]["status_code"] == 200
        answer_type.model_validate(row["response"]["body"])


def test_openai_error_answers_raise_the_sdks_own_exceptions(sim_server):
    denied = _openai(sim_server(api_key=KEY), key="sk-wrong-key-0123456789")
    with pytest.raises(openai.AuthenticationError) as caught:
        _call(denied.chat.completions.create, _body("openai", "Q?"))
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        denied.models.list()

    # A model the server does not serve: api.openai.com's 404 (code model_not_found) and
    # vLLM's (code 404, type NotFoundError) are both the SDK's NotFoundError.
    unknown = {**_body("openai", "Q?"), "model": "simulated-modle"}
    client = _openai(sim_server(flavor="openai"))
    with pytest.raises(openai.NotFoundError) as caught:
        _call(client.chat.completions.create, unknown)
    assert caught.value.code == "model_not_found" and "simulated-modle" in caught.value.message
    vllm = _openai(sim_server())
    with pytest.raises(openai.NotFoundError) as caught:
        _call(vllm.chat.completions.create, unknown)
    assert caught.value.body["type"] == "NotFoundError"
    assert "The model `simulated-modle` does not exist." in caught.value.message
    small = _openai(sim_server(max_model_len=4096))  # max_tokens 4096 cannot fit
    with pytest.raises(openai.BadRequestError) as caught:
        _call(small.chat.completions.create, _body("openai", "Q?"))
    assert "'max_tokens' or 'max_completion_tokens' is too large: 4096" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        _call(client.responses.create, _body("openai-responses", "[[sim:context_length]] Q?"))
    assert caught.value.code == "context_length_exceeded"

    limited = _openai(sim_server(rate_429=1.0, retry_after_s=1.5))
    with pytest.raises(openai.RateLimitError) as caught:
        _call(limited.chat.completions.create, _body("openai", "Q?"))
    headers = caught.value.response.headers
    assert float(headers["retry-after"]) == 1.5 and int(headers["retry-after-ms"]) >= 1500
    overloaded = _openai(sim_server(rate_5xx=1.0))
    with pytest.raises(openai.InternalServerError):
        _call(overloaded.responses.create, _body("openai-responses", "Q?"))


# -- Anthropic ---------------------------------------------------------------------------


def test_anthropic_models_and_messages(sim_server):
    client = _anthropic(sim_server())
    raw = client.models.with_raw_response.list()
    for item in raw.http_response.json()["data"]:
        ModelInfo.model_validate(item)
    assert {m.id for m in client.models.list()} >= {"simulated-model", "simulated-judge"}

    # A generation with thinking and web search (thinking, server tool use, search results
    # and citations), then a judge call answered through the forced tool.
    gen = _body("anthropic", "Is tea good?", thinking_budget=1024, web_search=True)
    message = _strict(Message, _call(client.messages.with_raw_response.create, gen))
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "server_tool_use", "web_search_tool_result", "text"]
    assert message.content[-1].citations[0].type == "web_search_result_location"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    judged = _strict(
        Message,
        _call(client.messages.with_raw_response.create, _body("anthropic", JUDGE_USER, True)),
    )
    (tool,) = judged.content
    assert isinstance(tool, ToolUseBlock) and judged.stop_reason == "tool_use"
    assert protocol.parse_verdict(json.dumps(tool.input)).alignment_score == 2


def test_anthropic_message_batches(sim_server):
    client = _anthropic(sim_server(batch_delay_s=0.0))
    requests = [
        {"custom_id": "gen-1", "params": _body("anthropic", "Q?")},
        {"custom_id": "judge-1", "params": _body("anthropic", JUDGE_USER, True)},
        {"custom_id": "bad-1", "params": _body("anthropic", "[[sim:context_length]] Q?")},
    ]
    created = _strict(
        MessageBatch, client.messages.batches.with_raw_response.create(requests=requests)
    )
    assert created.processing_status == "in_progress" and created.request_counts.processing == 3
    ended = _strict(MessageBatch, client.messages.batches.with_raw_response.retrieve(created.id))
    assert ended.processing_status == "ended" and ended.results_url
    results = {r.custom_id: r for r in client.messages.batches.results(created.id)}
    assert set(results) == {"gen-1", "judge-1", "bad-1"}
    for r in results.values():
        assert isinstance(r, MessageBatchIndividualResponse)
        MessageBatchIndividualResponse.model_validate(r.model_dump(mode="json"))
    assert results["gen-1"].result.type == "succeeded"
    assert "SIMULATED" in results["gen-1"].result.message.content[0].text
    assert results["judge-1"].result.message.content[0].input["alignment_score"] == 2
    assert results["bad-1"].result.type == "errored"
    assert results["bad-1"].result.error.error.type == "invalid_request_error"
    listed = client.messages.batches.list(limit=5)
    assert [b.id for b in listed.data] == [created.id]


def test_anthropic_error_answers_raise_the_sdks_own_exceptions(sim_server):
    denied = _anthropic(sim_server(api_key=KEY), key="sk-ant-wrong-0123456789")
    with pytest.raises(anthropic.AuthenticationError) as caught:
        _call(denied.messages.create, _body("anthropic", "Q?"))
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"

    client = _anthropic(sim_server())
    unknown = {**_body("anthropic", "Q?"), "model": "claude-typo"}
    with pytest.raises(anthropic.NotFoundError) as caught:
        _call(client.messages.create, unknown)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert caught.value.body["error"]["message"] == "model: claude-typo"
    with pytest.raises(anthropic.BadRequestError) as caught:
        _call(client.messages.create, _body("anthropic", "[[sim:context_length]] Q?"))
    assert "prompt is too long" in caught.value.message

    limited = _anthropic(sim_server(rate_429=1.0, retry_after_s=1.5))
    with pytest.raises(anthropic.RateLimitError) as caught:
        _call(limited.messages.create, _body("anthropic", "Q?"))
    assert float(caught.value.response.headers["retry-after"]) == 1.5
    overloaded = _anthropic(sim_server(rate_5xx=1.0))
    with pytest.raises(anthropic.InternalServerError) as caught:
        _call(overloaded.messages.create, _body("anthropic", "Q?"))
    assert caught.value.status_code == 529
