"""API keys: from the environment or `.env`, per role, never stored."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from evaluator.config.run_config import ConfigError


def load_dotenv(path: Path = Path(".env")) -> dict[str, str]:
    """KEY=VALUE lines from a `.env` file; existing environment variables win.

    Written here rather than depending on python-dotenv: the format we accept is
    ten lines of code (comments, `export`, optional quotes) and nothing else.
    """
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


# The variable each provider's own SDK reads when no key is given.
DEFAULT_KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "openai-responses": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}


def _safe_for_key(url: str) -> bool:
    """A key read implicitly only goes over TLS, or to this machine: never in clear text
    over a network to a server the user may not have meant to give it to."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" or host in ("localhost", "127.0.0.1", "::1")


def stage_key(
    env_name: str | None, provider: str, urls: list[str], dotenv: dict[str, str]
) -> tuple[str | None, str | None]:
    """(key, the variable it came from) for one stage.

    `env_name` (--api-key-env) when given; otherwise the provider's usual variable
    (OPENAI_API_KEY, ANTHROPIC_API_KEY) when it is set and every endpoint of the stage
    is https or local. The caller says which variable was read, never the value.
    """
    if env_name:
        return resolve_key(env_name, dotenv), env_name
    name = DEFAULT_KEY_VARIABLES.get(provider)
    if name is None or not (os.environ.get(name) or dotenv.get(name)):
        return None, None
    if not all(_safe_for_key(u) for u in urls):
        return None, None
    return resolve_key(name, dotenv), name


def resolve_key(env_name: str | None, dotenv: dict[str, str]) -> str | None:
    """The API key named by `env_name`, from the environment, then `.env`. Never stored.

    A key must be printable ASCII without spaces (what providers issue, and what an HTTP
    header can carry): a carriage return left by a file with Windows line endings, a
    newline or a tab is refused here, naming the variable, never the value."""
    if not env_name:
        return None
    key = os.environ.get(env_name) or dotenv.get(env_name)
    if not key:
        raise ConfigError(f"API key variable {env_name} is not set (in the environment or ./.env)")
    bad = [c for c in key if not ("!" <= c <= "~")]
    if bad:
        kind = _describe_char(bad[0])
        where = " at its end" if key[-1] == bad[0] and len(bad) == 1 else ""
        raise ConfigError(
            f"the API key in {env_name} contains {kind}{where}; keys are printable ASCII "
            "without spaces. Set the variable again without it (a key copied from a file "
            "with Windows line endings keeps a carriage return: strip it)"
        )
    return key


def _describe_char(c: str) -> str:
    names = {"\r": "a carriage return", "\n": "a line break", "\t": "a tab", " ": "a space"}
    if c in names:
        return names[c]
    if ord(c) < 32 or ord(c) == 127:
        return f"a control character (U+{ord(c):04X})"
    return f"a character outside printable ASCII (U+{ord(c):04X})"
