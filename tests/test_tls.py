"""https end to end: every wire format and both Batch APIs against the simulated server
serving TLS with certificates made at test time (trustme), through the same faults the
plain-http tests inject; custom CAs; certificates that must fail; redirects never followed."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable

import orjson
import pytest
from aiohttp import web

from evaluator.dataset import iter_pairs
from evaluator.store import Store
from tests.conftest import (
    make_tls,
    read_summary,
    run_cli,
    run_eval,
    run_evaluator,
)
from workers.base import Completion, ErrorClass, FatalEndpointError
from workers.client import EndpointConfig, EndpointMisconfigured
from workers.pool import EndpointPool, PoolConfig
from workers.providers import get_provider
from workers.simulated import sides_from_pairs

PROVIDERS = ("openai", "openai-responses", "anthropic")
KIND = {"openai": "chat", "openai-responses": "responses", "anthropic": "messages"}
KEY = "sk-tls-test-0123456789abcdef"
# Quick batching: submit after 0.2 s without a new call, poll every 0.1 s.
FAST_BATCH = ("--batch-idle", "0.2", "--batch-poll", "0.1")


def _sides(data):
    return sides_from_pairs(iter_pairs(str(data)))


def _https(sim_server, tls, **kwargs):
    server = sim_server(ssl_context=tls.server_context(), **kwargs)
    assert server.base_url.startswith("https://")
    return server


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_wire_format_end_to_end_over_https_through_faults(
    provider, tmp_path, synthetic, sim_server, tls
):
    n = 30
    data = synthetic(n)
    server = _https(
        sim_server,
        tls,
        sides=_sides(data),
        rate_429=0.12,
        retry_after_s=0.05,
        rate_5xx=0.1,
        rate_reset=0.08,
        rate_stall=0.06,
        stall_s=3.0,
    )
    out = tmp_path / "run"
    code = run_eval(
        data,
        server.base_url,
        out,
        *("--provider", provider, "--ca-bundle", tls.ca_pem),
        *("--timeout", "1", "--max-attempts", "12", "--backoff-base", "0.05"),
    )
    assert code == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n and s["n_failed"] == 0
    stats = server.stats()
    assert set(stats["by_format"]) == {KIND[provider]}  # model and judge spoke the format
    by_kind = stats["by_kind"]
    for fault in ("429", "5xx", "reset", "stall"):  # each fault was met and ridden out
        assert sum(v for k, v in by_kind.items() if k.endswith(fault)) > 0, fault
    endpoints = s["last_session"]["endpoints"]
    assert sum(ep["rate_limited"] for stage in endpoints.values() for ep in stage) > 0


def _attempt(url: str, provider: str, ca_bundle, key: str | None = None):
    p = get_provider(provider)
    body = p.build_body("m", "sys", "q?", temperature=0.1, top_p=0.9, max_tokens=64)
    config = EndpointConfig(url, api_key=key, provider=provider, ca_bundle=str(ca_bundle))

    async def go():
        async with p.client(config) as client:
            return await client.attempt(orjson.dumps(body))

    return asyncio.run(go())


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_error_answers_over_https_keep_their_classes(provider, sim_server, tls):
    ok = _attempt(_https(sim_server, tls).base_url, provider, tls.ca_pem)
    assert isinstance(ok.result, Completion) and "SIMULATED" in ok.result.content
    limited = _attempt(
        _https(sim_server, tls, rate_429=1.0, retry_after_s=1.5).base_url, provider, tls.ca_pem
    )
    assert limited.result.error_class is ErrorClass.RATE_LIMIT
    assert limited.retry_after_s == pytest.approx(1.5, abs=0.01)
    overloaded = _attempt(_https(sim_server, tls, rate_5xx=1.0).base_url, provider, tls.ca_pem)
    assert overloaded.result.error_class is ErrorClass.TRANSIENT
    revoked = _https(sim_server, tls, api_key=KEY, fail_auth_after=0)
    denied = _attempt(revoked.base_url, provider, tls.ca_pem, key=KEY)
    assert denied.result.error_class is ErrorClass.FATAL and denied.result.status == 401
    assert KEY not in denied.result.message


@pytest.mark.slow
@pytest.mark.parametrize("provider", PROVIDERS)
def test_key_revoked_mid_run_over_https_stops_and_resume_finishes(
    provider, tmp_path, synthetic, sim_server, tls, monkeypatch, caplog
):
    n = 20
    data = synthetic(n)
    monkeypatch.setenv("SIM_TLS_KEY", KEY)
    revoking = _https(sim_server, tls, api_key=KEY, fail_auth_after=25)
    out = tmp_path / "run"
    flags = ("--provider", provider, "--api-key-env", "SIM_TLS_KEY", "--ca-bundle", tls.ca_pem)
    caps = ("--concurrency", "4", "--judge-concurrency", "4")
    assert run_eval(data, revoking.base_url, out, *flags, *caps) == 3
    assert "key revoked" in caplog.text and KEY not in caplog.text
    assert read_summary(out)["complete"] is False
    healthy = _https(sim_server, tls, api_key=KEY)
    assert run_eval(data, healthy.base_url, out, "--resume", *flags, *caps) == 0
    assert read_summary(out)["n_valid"] == n


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_apis_over_https_with_failures_inside_batches(
    provider, tmp_path, synthetic, sim_server, tls
):
    """Both stages through the provider's Batch API (OpenAI: multipart file upload, batches,
    file content; Anthropic: Message Batches and their results), over https."""
    n = 16
    data = synthetic(n)
    server = _https(sim_server, tls, batch_delay_s=0.1, batch_fail_every=5, batch_expire_every=7)
    out = tmp_path / "run"
    code = run_eval(
        data,
        server.base_url,
        out,
        *("--provider", provider, "--ca-bundle", tls.ca_pem),
        *("--mode", "batch", "--judge-mode", "batch", *FAST_BATCH),
    )
    assert code == 0
    stats = server.stats(bodies=True)
    b = stats["batches"]
    failed = b["lines_failed"] + b["lines_expired"]
    assert b["lines_failed"] >= 1 and b["lines_expired"] >= 1
    assert b["resubmitted_bodies"] == failed  # each retried once, in a later batch
    assert b["requests_submitted"] == 3 * n + failed
    assert stats["bodies"] == {}  # nothing went online
    if provider == "openai":
        assert b["files_uploaded"] == b["batches_created"]
    else:
        assert b.get("files_uploaded", 0) == 0
    s = read_summary(out)
    assert s["complete"] and s["n_valid"] == n and s["n_failed"] == 0


@pytest.mark.slow
def test_simulated_server_process_serves_https(tmp_path, synthetic, sim_process, tls):
    data = synthetic(4)
    server = sim_process("--dataset", str(data), tls=tls)
    assert server.base_url.startswith("https://")
    out = tmp_path / "run"
    result = run_evaluator(
        "run",
        *("--data", data, "--model", "m", "--base-url", server.base_url),
        *("--ca-bundle", tls.ca_pem, "--out", out, "--quiet", "--judge-prompt", "builtin"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert server.stats()["requests_total"] == 3 * 4 + 1  # + the judge's preflight test call


# -- trusted CAs -------------------------------------------------------------------------


@pytest.mark.slow
def test_ssl_cert_file_is_honoured(tmp_path, synthetic, sim_server, tls, monkeypatch, caplog):
    data = synthetic(3)
    server = _https(sim_server, tls)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert run_eval(data, server.base_url, tmp_path / "untrusted") == 4
    assert "certificate" in caplog.text
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_pem))
    assert run_eval(data, server.base_url, tmp_path / "trusted") == 0
    assert read_summary(tmp_path / "trusted")["n_valid"] == 3


@pytest.mark.slow
def test_ca_bundle_from_a_config_file_and_changed_on_resume(tmp_path, synthetic, sim_server, tls):
    data = synthetic(4)
    server = _https(sim_server, tls)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    shutil.copy(tls.ca_pem, conf_dir / "corp-ca.pem")
    cfg = conf_dir / "run.toml"
    cfg.write_text(
        f'data = "{data}"\nlimit = 2\nca_bundle = "corp-ca.pem"\njudge_prompt = "builtin"\n'
        f'[model]\nname = "m"\nbase_url = "{server.base_url}"\n'
    )
    out = tmp_path / "run"
    assert run_cli("run", "--config", cfg, "--out", out, "--quiet") == 0
    with Store.open(out, create=False, lock=False) as store:
        # Relative to the config file, stored absolute so a resume from elsewhere finds it.
        assert store.get_meta("config")["ca_bundle"] == str(conf_dir / "corp-ca.pem")
    # How calls travel is not what they ask: --resume may point at another bundle.
    moved = tmp_path / "moved-ca.pem"
    shutil.copy(tls.ca_pem, moved)
    resumed = ("--resume", "--limit", "4", "--ca-bundle", moved, "--quiet")
    assert run_cli("run", "--out", out, *resumed) == 0
    assert read_summary(out)["n_valid"] == 4
    with Store.open(out, create=False, lock=False) as store:
        assert store.get_meta("config")["ca_bundle"] == str(moved)


@pytest.mark.slow
@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_unusable_ca_bundle_is_a_user_error(tmp_path, synthetic, capsys, content):
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    url = "https://127.0.0.1:9/v1"
    assert run_eval(synthetic(2), url, tmp_path / "run", "--ca-bundle", bundle) == 2
    err = capsys.readouterr().err
    assert f"--ca-bundle {bundle}" in err and "Traceback" not in err


# -- certificates that must fail ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown CA", "another host's certificate"])
def test_bad_certificate_fails_preflight_naming_the_host(
    case, tmp_path, synthetic, sim_server, tls
):
    if case == "unknown CA":  # signed by a CA the client was not given
        served, trusted = make_tls(tmp_path / "other", "127.0.0.1"), tls.ca_pem
    else:  # signed by a trusted CA, but for another name
        served = make_tls(tmp_path / "wrong", "api.example.invalid")
        trusted = served.ca_pem
    server = sim_server(ssl_context=served.server_context())
    host = server.base_url.split("//")[1].split("/")[0]
    result = run_evaluator(
        "run",
        *("--data", synthetic(3), "--model", "m", "--base-url", server.base_url),
        *("--ca-bundle", trusted, "--out", tmp_path / "run", "--judge-prompt", "builtin"),
        timeout=60,
    )
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert f"TLS certificate of {host}" in errors[0] and "--ca-bundle" in errors[0]
    assert "nothing was sent" in errors[0]
    assert "Traceback" not in result.stderr
    assert server.stats()["requests_total"] == 0


@pytest.mark.slow
def test_certificate_error_during_a_call_is_fatal_not_retried(tmp_path, sim_server, tls):
    served = make_tls(tmp_path / "other", "127.0.0.1")
    server = sim_server(ssl_context=served.server_context())
    config = EndpointConfig(server.base_url, ca_bundle=str(tls.ca_pem))
    body = orjson.dumps(
        get_provider("openai").build_body("m", "s", "q?", temperature=0, top_p=1, max_tokens=8)
    )

    async def go():
        async with EndpointPool([config], PoolConfig(max_attempts=6, backoff_base_s=0.01)) as pool:
            return await pool.chat(body)

    with pytest.raises(FatalEndpointError) as caught:
        asyncio.run(go())
    failure = caught.value.failure
    assert failure.error_class is ErrorClass.FATAL and failure.attempts == 1
    assert "TLS certificate" in failure.message


@pytest.mark.slow
def test_bad_certificate_of_a_batch_endpoint_fails_preflight(
    tmp_path, synthetic, sim_server, tls, caplog
):
    model = sim_server()  # plain http: only the judge's Batch API is on https
    served = make_tls(tmp_path / "other", "127.0.0.1")
    judge = sim_server(ssl_context=served.server_context())
    code = run_eval(
        synthetic(3),
        model.base_url,
        tmp_path / "run",
        *("--judge-base-url", judge.base_url, "--judge-mode", "batch", *FAST_BATCH),
        *("--ca-bundle", tls.ca_pem),
    )
    assert code == 4
    assert "TLS certificate of 127.0.0.1" in caplog.text
    assert model.stats()["requests_total"] == 0 and judge.stats()["requests_total"] == 0


# -- redirects ---------------------------------------------------------------------------


class _App:
    """An aiohttp app on its own thread and loop (a stand-in gateway, or another host)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner = web.AppRunner(app, access_log=None)

    def __enter__(self) -> _App:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _elsewhere(seen: list[dict]) -> web.Application:
    """Another host: records every request that reaches it, with its headers."""

    async def record(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "headers": dict(request.headers)})
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    return app


def _gateway(target: Callable[[], str], redirect: Callable[[web.Request], bool]) -> web.Application:
    """Answers 307 to `target()` + the path for the requests `redirect` picks; lists models."""

    async def handle(request: web.Request) -> web.Response:
        if redirect(request):
            raise web.HTTPTemporaryRedirect(target() + request.path_qs)
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _no_key_left_home(seen: list[dict]) -> None:
    keys = [r for r in seen if {"Authorization", "x-api-key"} & set(r["headers"])]
    assert keys == [], "the API key was sent to the host the redirect pointed at"
    assert seen == []  # nor anything else


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("when", ["start-up check", "a call"])
def test_redirect_is_reported_and_never_followed(
    provider, when, tmp_path, synthetic, monkeypatch, caplog
):
    seen: list[dict] = []
    monkeypatch.setenv("SIM_KEY", KEY)
    with _App(_elsewhere(seen)) as other:
        # At start-up every request is redirected; later only the calls (POST).
        pick = (lambda r: True) if when == "start-up check" else (lambda r: r.method == "POST")
        with _App(_gateway(lambda: other.base, pick)) as gateway:
            code = run_eval(
                synthetic(2),
                gateway.base + "/v1",
                tmp_path / "run",
                *("--provider", provider, "--api-key-env", "SIM_KEY"),
            )
    assert code == (4 if when == "start-up check" else 3)
    assert "answered 307, a redirect to " + other.base + "/v1/" in caplog.text
    assert KEY not in caplog.text
    _no_key_left_home(seen)


@pytest.mark.slow
def test_redirect_from_a_batch_api_is_reported_and_never_followed(
    tmp_path, synthetic, sim_server, monkeypatch, caplog
):
    seen: list[dict] = []
    model = sim_server()
    monkeypatch.setenv("SIM_KEY", KEY)
    with _App(_elsewhere(seen)) as other:
        with _App(_gateway(lambda: other.base, lambda r: "batches" in r.path)) as gateway:
            code = run_eval(
                synthetic(2),
                model.base_url,
                tmp_path / "run",
                *("--judge-base-url", gateway.base + "/v1", "--judge-api-key-env", "SIM_KEY"),
                *("--judge-mode", "batch", *FAST_BATCH),
            )
    assert code == 4
    assert f"GET {gateway.base}/v1/batches answered 307" in caplog.text
    _no_key_left_home(seen)


def test_start_up_check_reports_a_redirect_as_misconfiguration():
    """The client's own check, without a run: the exception type says no retry helps."""
    seen: list[dict] = []
    with _App(_elsewhere(seen)) as other:
        with _App(_gateway(lambda: other.base, lambda r: True)) as gateway:
            config = EndpointConfig(gateway.base + "/v1", api_key=KEY)

            async def go():
                async with get_provider("openai").client(config) as client:
                    await client.check()

            with pytest.raises(EndpointMisconfigured, match="a redirect to"):
                asyncio.run(go())
    _no_key_left_home(seen)
