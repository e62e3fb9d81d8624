"""What every handler can reach: the stand-in's URL, its state, its token signer and its extension tables."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from localdev.standin.state import State
from localdev.standin.tokens import Signer

if TYPE_CHECKING:
    from localdev.standin.routing import Request, Response
    from localdev.standin.state import App, Tenant

# A token endpoint grant: (request, tenant, form fields) -> response. Keyed by grant_type in Context.grants.
GrantHandler = Callable[["Request", "Tenant", dict[str, str]], "Response"]
# Checks a client assertion against the app's federated identity credentials (request, tenant, app, header,
# assertion); raises HttpError to refuse it. Set by localdev.standin.federation.
FederatedCheck = Callable[["Request", "Tenant", "App", dict[str, object], str], None]


@dataclass
class Context:
    state: State
    signer: Signer
    url: str = ""  # https://127.0.0.1:PORT, set once the socket is bound
    grants: dict[str, GrantHandler] = field(default_factory=dict)
    federated_check: FederatedCheck | None = None
