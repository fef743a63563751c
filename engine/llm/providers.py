"""Named providers: `providers: {NAME: {base_url, api_key_env, api, headers, limits}}` in a
pipeline or in the user settings (a pipeline's definition of a name wins).

A step picks one with `model: NAME/MODEL` or `provider: NAME`; a model whose part before the first `/` is not a
declared provider's name is sent as written (model names such as `meta-llama/Llama-3-8B` keep
their slash) to the default server (`OPENAI_BASE_URL`, `OPENAI_API_KEY`). Keys are only ever read
from the environment variable the provider names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepchain.errors import CredentialsMissing
from stepchain.llm.limits import Limits, parse_limits

__all__ = [
    "DEFAULT_BASE_URL",
    "Provider",
    "check_provider_credentials",
    "default_base_url",
    "parse_providers",
    "qualified",
    "split_model",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Provider:
    """One OpenAI-compatible server a pipeline names."""

    name: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    api: str = "auto"
    headers: dict[str, str] = field(default_factory=dict, compare=False)
    limits: dict[str, Limits] = field(default_factory=dict, compare=False)  # model -> limits


def parse_providers(raw: Mapping[str, Any] | None) -> dict[str, Provider]:
    """The (schema-checked) `providers:` section as Providers."""
    return {
        str(name): Provider(
            str(name),
            str(spec["base_url"]).rstrip("/"),
            str(spec.get("api_key_env") or "OPENAI_API_KEY"),
            str(spec.get("api") or "auto"),
            {str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
            parse_limits(spec.get("limits") or {}),
        )
        for name, spec in (raw or {}).items()
    }


def split_model(model: str, providers: Mapping[str, Provider]) -> tuple[Provider | None, str]:
    """(the provider, the model name it knows) for `NAME/MODEL`; (None, model) otherwise."""
    name, slash, rest = model.partition("/")
    if slash and rest and name in providers:
        return providers[name], rest
    return None, model


def qualified(model: str, provider: str | None) -> str:
    """The model as `PROVIDER/MODEL` when the step names its provider in `provider:`."""
    return f"{provider}/{model}" if provider else model


def default_base_url() -> str:
    """Where a model without a provider goes: OPENAI_BASE_URL, or OpenAI's own API."""
    return (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def check_provider_credentials(provider: Provider) -> None:
    """Fail with one clear line when the provider's key variable is not set."""
    if not os.environ.get(provider.api_key_env):
        raise CredentialsMissing(
            f"provider {provider.name} ({provider.base_url}) needs credentials: set "
            f"{provider.api_key_env} (a local server without auth accepts any value, e.g. "
            f"{provider.api_key_env}=local)"
        )
