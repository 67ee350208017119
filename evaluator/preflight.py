"""Preflight: before the first paid call, show that each stage's endpoints serve what the run asks.

A typo in `--model`, a base URL without `/v1`, a judge the server does not
serve, a server that refuses structured output: each makes every call of a
run fail the same way. Found here, it costs one clear line and a few test
calls instead of a night.

Per stage (the model under test, the judge) and per reachable endpoint:

1. `GET /models` (already fetched by the reachability check): when it lists
   the model, the model is served.
2. Otherwise (no list, or a list without the name, as with Anthropic's
   aliases), one test call in the stage's real request shape (its system
   prompt, sampling, max_tokens, wire format and options) with a tiny input.
3. For the judge (online), one test call always, asking for the verdict schema
   (`response_format` json_schema and its equivalents), so a server that
   refuses structured output is found now. Its answer should parse as a
   verdict; when it does not, the run goes on with a warning (re-asks and
   invalid verdicts are counted as usual).

A stage in batch mode gets no test call (it sends nothing online): its /models
list decides. Test calls go to the configured endpoints only, are counted in usage and
cost (the store's `preflight_usage`), and are never stored as calls. A failure
raises PreflightError (exit 4) or FatalEndpointError (a refused key, exit 3).
`--no-preflight` skips steps 1-3; the reachability check stays.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from evaluator import protocol
from evaluator.calls import CallBuilder
from evaluator.config import DEFAULT_JUDGE_MODEL, RunConfig
from workers.base import CallFailure, Completion, ErrorClass, FatalEndpointError
from workers.client import Attempt, EndpointConfig, HTTPClient, ModelList
from workers.providers import get_provider
from workers.retry import backoff_s, retry

log = logging.getLogger("evaluator")

SIM_OWNER = "simulated-backend"  # what the simulated server lists as `owned_by`
PROBE_ATTEMPTS = 3  # a busy or rate-limited endpoint is waited for briefly, then skipped
PROBE_MAX_WAIT_S = 5.0
PROBE_BACKOFF_S = 2.0  # the waits between tries: 1-2 s, then 2-4 s (jittered)

# Our own test inputs: short, neutral, and shaped like the benchmark's.
PROBE_QUESTION = "This is a connection test before an evaluation run. Reply with the word OK."
PROBE_ISSUE = "Connection test: whether the reply OK is an adequate answer to a test message."
PROBE_ANSWER = "OK."


class PreflightError(Exception):
    """A stage cannot run as configured; the message names the endpoint and the fix."""


@dataclass
class PreflightReport:
    probes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (stage, usage)
    simulated: bool = False  # an endpoint identified itself as the simulated backend
    endpoints_checked: int = 0


@dataclass(frozen=True)
class _Stage:
    name: str  # "gen" | "judge"
    label: str  # "model" | "judge"
    model: str
    provider: str
    model_flag: str
    url_flag: str
    body: bytes


def probe_bodies(config: RunConfig) -> dict[str, bytes]:
    """The two test calls' exact bodies, built like the run's own requests."""
    calls = CallBuilder(config)
    judge_message = protocol.judge_user_message(
        PROBE_ISSUE, PROBE_QUESTION, PROBE_ANSWER, PROBE_QUESTION, PROBE_ANSWER
    )
    return {
        "gen": orjson.dumps(calls.generation_body(PROBE_QUESTION)),
        "judge": orjson.dumps(calls.judge_body(judge_message)),
    }


def _stages(config: RunConfig) -> list[_Stage]:
    bodies = probe_bodies(config)
    return [
        _Stage(
            "gen", "model", config.model, config.provider, "--model", "--base-url", bodies["gen"]
        ),
        _Stage(
            "judge",
            "judge",
            config.judge_model,
            config.judge_provider,
            "--judge-model",
            "--judge-base-url",
            bodies["judge"],
        ),
    ]


async def run_preflight(
    config: RunConfig,
    clients: dict[str, Any],
    keys: dict[str, str | None],
    *,
    probe: bool = True,
) -> PreflightReport:
    """Check both stages; blocks until every test call has answered (a few seconds).

    `clients`: "gen"/"judge" -> the stage's EndpointPool or BatchStage (entered, and its
    reachability checked). `keys`: each stage's API key, for a batch stage's test client.
    Raises PreflightError or FatalEndpointError; cancellation propagates.
    """
    report = PreflightReport()
    for stage in _stages(config):
        if stage.name == "gen" and config.judge_only:
            continue  # the answers come from the dataset: no model endpoint to check
        client = clients[stage.name]
        endpoints = getattr(client, "endpoints", None) or []
        if endpoints:  # an online pool: its endpoints' clients and /models lists
            for ep in endpoints:
                if not ep.healthy or ep.models is None:
                    continue  # unreachable now: it joins when it answers (not checked)
                await _check_endpoint(stage, ep.client, ep.models, report, probe)
            continue
        # A batch stage: the same checks through a short-lived online client of its provider.
        url = client.api.base_url
        ep_config = EndpointConfig(
            base_url=url,
            api_key=keys.get(stage.name),
            name=f"{stage.label} endpoint",
            timeout_s=config.timeout_s,
            provider=stage.provider,
            model=stage.model,
            ca_bundle=config.ca_bundle,
        )
        async with get_provider(stage.provider).client(ep_config) as online:
            models = await online.check()
            # No test call: a batch stage sends nothing online (that is its point).
            await _check_endpoint(stage, online, models, report, probe=False)
            _check_listed(stage, online, models)
    return report


def _check_listed(stage: _Stage, client: HTTPClient, models: ModelList) -> None:
    """Without a test call, the /models list decides: OpenAI lists every model a key can
    use, so a missing name is an error; Anthropic lists no aliases, so only a warning."""
    if not models.listed or stage.model in models.ids:
        return
    if stage.provider.startswith("openai"):
        missing = CallFailure(ErrorClass.INVALID_REQUEST, "not in its /models list", 404)
        raise_for(stage, client, models, missing)
    near = nearest(stage.model, models.ids)
    log.warning(
        "%s endpoint %s does not list `%s` on /models%s; if the name is wrong, the batch's "
        "requests will fail",
        stage.label,
        client.config.base_url,
        stage.model,
        f" (did you mean `{near}`?)" if near else "",
    )


async def _check_endpoint(
    stage: _Stage, client: HTTPClient, models: ModelList, report: PreflightReport, probe: bool
) -> None:
    report.endpoints_checked += 1
    if SIM_OWNER in models.owned_by:
        report.simulated = True
    listed = models.listed and stage.model in models.ids
    if not probe:
        return
    judge_unprobed = stage.name == "judge" and not any(s == "judge" for s, _ in report.probes)
    if listed and not judge_unprobed:
        return
    outcome = await _probe(client, stage.body)
    result = outcome.result
    if isinstance(result, CallFailure) and result.error_class.retryable:
        # Busy or rate-limited now: that says nothing about the setup. The run's own
        # retries deal with it; the circuit breaker catches a setup that is wrong after all.
        log.warning(
            "preflight: %s endpoint %s did not complete the test call (%s); not checked, going on",
            stage.label,
            client.config.base_url,
            result.message,
        )
        return
    if isinstance(result, Completion):
        report.probes.append((stage.name, result.usage or {}))
        if models.listed and not listed:
            log.info(
                "%s endpoint %s does not list `%s` on /models but answers for it",
                stage.label,
                client.config.base_url,
                stage.model,
            )
        if stage.name == "judge":
            _check_verdict(stage, client, result)
        return
    raise_for(stage, client, models, result)


async def _probe(client: HTTPClient, body: bytes) -> Attempt:
    """One test call; rate limits and transient errors are waited out a few times."""

    def wait_after(attempt: int, outcome: Attempt) -> float | None:
        result = outcome.result
        if attempt >= PROBE_ATTEMPTS or isinstance(result, Completion):
            return None
        if not result.error_class.retryable:
            return None
        wait = outcome.retry_after_s
        if wait is None:
            wait = backoff_s(attempt, PROBE_BACKOFF_S)
        if wait > PROBE_MAX_WAIT_S:
            return None  # told to come back much later: not worth holding the start for
        return wait

    return await retry(lambda _n: client.attempt(body), wait_after)


def _check_verdict(stage: _Stage, client: HTTPClient, result: Completion) -> None:
    answer, _ = protocol.split_reasoning(result.content, result.reasoning)
    try:
        protocol.parse_verdict(answer)
    except protocol.VerdictError as exc:
        log.warning(
            "judge endpoint %s: its answer to the test pair is not a valid verdict (%s); "
            "structured output may not be enforced there. The run goes on: invalid verdicts "
            "are re-asked, then counted",
            client.config.base_url,
            exc,
        )


def raise_for(stage: _Stage, client: HTTPClient, models: ModelList, failure: CallFailure) -> None:
    """Turn a failed test call into the one line that says what is wrong and what to do."""
    url = client.config.base_url
    where = f"the {stage.label} endpoint {url}"
    said = failure.message
    if failure.error_class is ErrorClass.FATAL:
        raise FatalEndpointError(f"{stage.label} endpoint", failure)
    if failure.status == 404 and models.status == 404 and not _mentions_model(said, stage.model):
        path = urlsplit(url).path.rstrip("/")
        if not path.endswith("/v1"):
            hint = f"is `/v1` missing from {stage.url_flag}? (try {url.rstrip('/')}/v1)"
        else:
            hint = f"check {stage.url_flag}: it is not the root of an OpenAI-compatible API"
        raise PreflightError(
            f"{where} answers 404 on GET /models and on the request path ({said}): {hint}"
        )
    if failure.status == 404 or (failure.status == 400 and _model_unknown(said)):
        served = models.ids if models.listed else []
        default = " (the default judge)" if stage.model == DEFAULT_JUDGE_MODEL else ""
        parts = [f"{where} does not serve `{stage.model}`{default} (it answered: {said})."]
        if served:
            shown = ", ".join(f"`{m}`" for m in served[:10])
            more = f" and {len(served) - 10} more" if len(served) > 10 else ""
            parts.append(f"It serves: {shown}{more}.")
            near = nearest(stage.model, served)
            if near is not None:
                parts.append(f"Did you mean `{near}`?")
        fix = f"Fix: give {stage.model_flag} with a name it serves"
        if stage.name == "judge":
            fix += f", or {stage.url_flag} for a server that serves the judge"
        parts.append(fix)
        raise PreflightError(" ".join(parts))
    if failure.error_class is ErrorClass.CONTEXT_LENGTH:
        raise PreflightError(
            f"{where} cannot take a request of this run's shape even with a tiny prompt "
            f"(max_tokens does not fit its context window?): {said}"
        )
    if stage.name == "judge" and _mentions_structured_output(said):
        raise PreflightError(
            f"{where} refuses structured output (the verdict's JSON schema), which the judge "
            f"needs: {said}. Use a server and model that support it (vLLM does)"
        )
    raise PreflightError(f"{where} refused a test call in this run's request shape: {said}")


def nearest(name: str, candidates: list[str]) -> str | None:
    """The served name closest to `name` (case first, then edit distance), or None."""
    for c in candidates:
        if c.lower() == name.lower():
            return c
    lowered = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _mentions_model(message: str, model: str) -> bool:
    text = message.lower()
    return model.lower() in text or "model_not_found" in text or "model:" in text


def _model_unknown(message: str) -> bool:
    text = message.lower()
    return "model_not_found" in text or "does not exist" in text or "unknown model" in text


def _mentions_structured_output(message: str) -> bool:
    text = message.lower()
    return any(w in text for w in ("response_format", "json_schema", "guided", "structured"))
