"""API keys at the run's boundaries: logs, and URLs that would carry them.

Keys come from the environment or `.env` (evaluator.config) and go only into the auth
headers of the configured endpoints. Everything else a run writes is kept free of them:

- answers and error messages: the clients remove every configured key from what a server
  sends back, before it is parsed, judged, stored or logged (workers.client, workers.batch);
- URLs: a base URL with a user name or password is refused (evaluator.config), and so is
  one that contains a configured key anywhere (`check_urls`), since URLs are stored in the
  checkpoint and summary.json, logged, and are a label of every metric;
- logs: while a run holds keys, every log record passes `redacted_logs`' filter, a last
  guard for a message built from something no one thought could hold a key;
- metrics: the /metrics page is redacted as it is served (evaluator.metrics).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from evaluator.config import ConfigError, RunConfig
from workers.base import redact

__all__ = ["KeyFilter", "check_urls", "redacted_logs"]


def check_urls(config: RunConfig, keys: dict[str, str | None]) -> None:
    """Refuse a base URL that contains one of the run's keys (`keys`: variable -> key),
    naming the flag and the variable, never the key."""
    for flag, urls in (("--base-url", config.base_url), ("--judge-base-url", config.judge_base_url)):
        for url in urls:
            for variable, key in keys.items():
                if key and len(key) >= 4 and key in url:
                    raise ConfigError(
                        f"{flag}: a URL contains the API key of {variable}; keys are never "
                        "put in URLs (they are stored, logged and shown in metrics): remove "
                        "it, the key goes in the request headers by itself"
                    )


class KeyFilter(logging.Filter):
    """Removes the given keys, and anything shaped like a key, from a log record's message
    and traceback. Never drops a record."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: logging reports it itself
            return True
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


@contextlib.contextmanager
def redacted_logs(secrets: tuple[str, ...]) -> Iterator[KeyFilter]:
    """While inside: the filter on the evaluator's logger (its own records, wherever they
    go) and on every handler of the root logger (records of any library)."""
    key_filter = KeyFilter(secrets)
    targets: list[logging.Logger | logging.Handler] = [
        logging.getLogger("evaluator"),
        *logging.getLogger().handlers,
    ]
    for target in targets:
        target.addFilter(key_filter)
    try:
        yield key_filter
    finally:
        for target in targets:
            target.removeFilter(key_filter)
