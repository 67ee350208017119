"""Provider Batch APIs on the wire: submit a set of requests, poll, read each request's result.

Two providers, one shape (`BatchAPI`, workers.batch.common): OpenAI Batch
(workers.batch.openai) and Anthropic Message Batches (workers.batch.anthropic).
`batch_api_for` picks the one a provider of workers.providers uses.
"""

from __future__ import annotations

from typing import Any

from workers.batch.anthropic import AnthropicBatchAPI
from workers.batch.common import CUSTOM_ID, BatchAPI, BatchError, BatchRef, BatchStatus
from workers.batch.openai import OpenAIBatchAPI
from workers.client import EndpointConfig
from workers.providers import get_provider

__all__ = [
    "BATCH_PROVIDERS",
    "CUSTOM_ID",
    "AnthropicBatchAPI",
    "BatchAPI",
    "BatchError",
    "BatchRef",
    "BatchStatus",
    "OpenAIBatchAPI",
    "batch_api_for",
]

BATCH_PROVIDERS = ("openai", "openai-responses", "anthropic")


def batch_api_for(provider: str, base_url: str, api_key: str | None, **kwargs: Any) -> BatchAPI:
    """The Batch API of a provider in workers.providers, reading answers with its wire."""
    p = get_provider(provider)
    wire = p.client(EndpointConfig(base_url=base_url, api_key=api_key)).wire
    if provider == "anthropic":
        return AnthropicBatchAPI(base_url, api_key, wire, **kwargs)
    if p.batch_url is None or provider not in BATCH_PROVIDERS:
        raise ValueError(f"provider {provider!r} has no Batch API here")
    api = OpenAIBatchAPI(base_url, api_key, wire, p.batch_url, **kwargs)
    api.provider = provider
    return api
