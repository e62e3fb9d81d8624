"""The security and wiring rules of infra/*.bicep, as functions over pycep-parser trees.

Each rule takes ``files`` (path relative to infra/ -> pycep tree) and returns a list of
violations (empty when the rule holds), so the same rule runs on the real templates and on
tampered copies (tests/infra/test_bicep.py proves each rule can fail).

pycep trees: a resource is {"type", "existing", "config"}, where "config" is the resource body,
or {"condition", "config"} for `= if (...) {...}`; strings lose their quotes and identifiers are
bare strings; expressions are {"operator": ...} / {"function": ...} nodes (see ``render``).

Rules that depend on parameters (private networking on or off, the API registration by the template
or by the hook) evaluate the templates for given parameter values with ``Deployment`` (a small
evaluator of the expressions these templates use); values known only in Azure stay ``Ref``s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Tree = dict[str, Any]
Files = dict[str, Tree]

# ---------------------------------------------------------------------------------------------
# What the deployment must have
# ---------------------------------------------------------------------------------------------

ROLE_GUIDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
STORAGE = "Microsoft.Storage/storageAccounts"
VAULT = "Microsoft.KeyVault/vaults"
APP_INSIGHTS = "Microsoft.Insights/components"
UAMI = "Microsoft.ManagedIdentity/userAssignedIdentities"
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"

# Two vaults, both deployed by modules/keyvault.bicep, told apart by the parameter that names them in app/rbac.bicep
# and app/api.bicep: the credential vault (KEY_VAULT_URL) holds the connections' secret material (appconn-*), which
# the service writes; the settings vault holds only the operator-set secrets the app settings reference.
KEY_VAULT_MODULE = "modules/keyvault.bicep"
CREDENTIAL_VAULT_PARAM = "keyVaultName"
SETTINGS_VAULT_PARAM = "settingsKeyVaultName"
CREDENTIAL_VAULT = f"{VAULT} (credential vault, {CREDENTIAL_VAULT_PARAM})"
SETTINGS_VAULT = f"{VAULT} (settings vault, {SETTINGS_VAULT_PARAM})"
VAULT_BY_PARAM = {CREDENTIAL_VAULT_PARAM: CREDENTIAL_VAULT, SETTINGS_VAULT_PARAM: SETTINGS_VAULT}
VAULT_OUTPUTS = {
    CREDENTIAL_VAULT_PARAM: ("AZURE_KEY_VAULT_NAME", "AZURE_KEY_VAULT_ENDPOINT"),
    SETTINGS_VAULT_PARAM: ("AZURE_SETTINGS_KEY_VAULT_NAME", "AZURE_SETTINGS_KEY_VAULT_ENDPOINT"),
}
VAULT_SECRET = "Microsoft.KeyVault/vaults/secrets"

# The identity's roles, each on its resource, and no others: it writes the credential vault, reads the settings vault.
IDENTITY_ROLES = {
    ("Storage Blob Data Owner", STORAGE),
    ("Storage Table Data Contributor", STORAGE),
    ("Key Vault Secrets Officer", CREDENTIAL_VAULT),
    ("Key Vault Secrets User", SETTINGS_VAULT),
    ("Monitoring Metrics Publisher", APP_INSIGHTS),
}
# The deploying user's role (when principalId is given): it sets the operator-set secrets in the settings vault,
# and holds no role on the credential vault, i.e. on the customers' credentials.
USER_ROLES = {("Key Vault Secrets Officer", SETTINGS_VAULT)}
IDENTITY_PRINCIPAL_PARAM = "identityPrincipalId"
USER_PRINCIPAL_PARAM = "userPrincipalId"

# The service's API registration: its app roles (values exactly as the service checks them), each also
# limited to one app as AppConnections.<Role>.<app>.
API_ROLES = (
    "AppConnections.Reader",
    "AppConnections.Writer",
    "AppConnections.Rotator",
    "AppConnections.Auditor",
    "AppConnections.Admin",
)
CONNECTION_APPS = ("azure-key-vault", "azure-app-configuration", "azure-client-secrets")
APP_SCOPED_ROLES = tuple(f"{role}.{app}" for role in API_ROLES for app in CONNECTION_APPS)
ROLE_MEMBER_TYPES = ["User", "Application"]
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
GRAPH_EXTENSION = "microsoftGraphV1"
GRAPH_APPLICATION = "Microsoft.Graph/applications"
GRAPH_SERVICE_PRINCIPAL = "Microsoft.Graph/servicePrincipals"
API_REGISTRATION_MODULE = "app/api-registration.bicep"
AUTH_SETTINGS = ("AUTH_TENANT_ID", "AUTH_AUDIENCE", "AUDIT_RETENTION_DAYS")
DIAGNOSTIC_SETTINGS = "Microsoft.Insights/diagnosticSettings"
TABLE_SERVICES = "Microsoft.Storage/storageAccounts/tableServices"
TABLE_LOG_CATEGORIES = ("StorageRead", "StorageWrite", "StorageDelete")
PRIVATE_ENDPOINT = "Microsoft.Network/privateEndpoints"
PRIVATE_DNS_ZONE_GROUP = "Microsoft.Network/privateEndpoints/privateDnsZoneGroups"
# Private endpoint sub-resource (group id) -> the privatelink DNS zone it needs (public-cloud prefix).
PRIVATE_ENDPOINT_ZONES = {
    "vault": "privatelink.vaultcore.",
    "blob": "privatelink.blob.",
    "table": "privatelink.table.",
}
FLEX_SUBNET_DELEGATION = "Microsoft.App/environments"

OAUTH_SETTINGS = (
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET",
    "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_SECRET",
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",
)
# Credential health (issue 15): the sweep, the checks, the expiry warning and the notification webhook.
HEALTH_SETTINGS = (
    "HEALTH_SWEEP_SCHEDULE",
    "HEALTH_CHECK_INTERVAL_HOURS",
    "EXPIRY_WARNING_DAYS",
    "NOTIFY_WEBHOOK_URL",
    "NOTIFY_WEBHOOK_SECRET",
)
NOTIFY_SECRET_SETTING = "NOTIFY_WEBHOOK_SECRET"
NOTIFY_SECRET_NAME = "notify-webhook-secret"
# The webhook URL is a bearer credential: the deployment writes it to the settings vault, the setting references it.
NOTIFY_URL_SETTING = "NOTIFY_WEBHOOK_URL"
NOTIFY_URL_SECRET_NAME = "notify-webhook-url"
CONSOLE_SECRET_SETTING = "CONSOLE_CLIENT_SECRET"
CONSOLE_SECRET_NAME = "console-client-secret"
# The federated method's identity: the Function App's user-assigned identity (property of its identity resource).
FEDERATION_SETTINGS = {
    "FEDERATION_IDENTITY_CLIENT_ID": "clientId",
    "FEDERATION_IDENTITY_PRINCIPAL_ID": "principalId",
    "FEDERATION_IDENTITY_TENANT_ID": "tenantId",
}
REQUIRED_SETTINGS = (
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsDisableHomepage",
    "AzureWebJobsStorage__clientId",
    "STATE_STORAGE",
    "KEY_VAULT_URL",
    "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE",
    "AZURE_CLIENT_ID",
    "AZURE_CLOUD",
    "AZURE_AUTHORITY_HOST",
    "GRAPH_ENDPOINT",
    *FEDERATION_SETTINGS,
    "SITE_URL",
    "ROTATION_SWEEP_SCHEDULE",
    "ROTATION_MAX_CONCURRENCY",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    *AUTH_SETTINGS,
    *OAUTH_SETTINGS,
    *HEALTH_SETTINGS,
)
# Settings Flex Consumption rejects or that would bring back key-based storage access.
FORBIDDEN_SETTINGS = (
    "AzureWebJobsStorage",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "APPINSIGHTS_INSTRUMENTATIONKEY",
)
# Names that contain KEY but hold the vault's address, not a secret.
NOT_SECRETS = {"KEY_VAULT_URL", "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"}
SECRETISH = re.compile(r"SECRET|KEY|PASSWORD|PASSWD|TOKEN", re.IGNORECASE)
KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=\$\{[A-Za-z_.]+\}secrets/([a-z0-9-]+)/\)$")
REDIRECT_PATH = "/organization/app-connections/azure/oauth/callback"

# The alerts on the service's notification log records (shared/notify.py): each is a trace with the custom
# dimensions below, in the workspace's AppTraces table (Properties column).
ALERTS_MODULE = "app/alerts.bicep"
ACTION_GROUP = "Microsoft.Insights/actionGroups"
SCHEDULED_QUERY_RULE = "Microsoft.Insights/scheduledQueryRules"
SCHEDULED_QUERY_RULE_API_VERSIONS = ("2022-06-15", "2023-03-15-preview")
NOTIFICATION_DIMENSIONS = ("notification", "event", "app", "connectionId", "connectionName", "status", "detail")
# The queries' columns (alert dimensions, search results) -> the custom dimension each reads. Not `name` or `message`
# as dimensions: Python's logging refuses those `extra` keys and OpenTelemetry's LoggingHandler drops them.
QUERY_COLUMNS = {
    "event": "event",
    "app": "app",
    "connectionId": "connectionId",
    "name": "connectionName",
    "status": "status",
    "message": "detail",
}
# Every event the service notifies: six, and a daily reminder of the three health states that last.
NOTIFICATION_BASE_EVENTS = (
    "rotation-failed",
    "validation-failed",
    "credential-expiring",
    "credential-expired",
    "health-check-unavailable",
    "recovered",
)
REMINDED_EVENTS = ("validation-failed", "credential-expiring", "credential-expired")
# A rotation that keeps failing is reminded of too: once its back-off has reached a day, each failed attempt; and a
# check that cannot run, daily.
NOTIFICATION_EVENTS = (*NOTIFICATION_BASE_EVENTS, *(f"{event}-reminder" for event in REMINDED_EVENTS),
                       "rotation-failed-reminder", "health-check-unavailable-reminder")
# Severity -> the events its rule alerts on, exactly. The expiring credential's reminders alert on nothing (they
# would email every day of the warning period; alerts.bicep says why), the failures' reminders do.
ALERTED_EVENTS = {
    1: {
        "credential-expired",
        "credential-expired-reminder",
        "rotation-failed",
        "rotation-failed-reminder",
        "validation-failed",
        "validation-failed-reminder",
    },
    2: {"credential-expiring", "health-check-unavailable", "health-check-unavailable-reminder"},
    4: {"recovered"},
}
UNALERTED_EVENTS = {"credential-expiring-reminder"}
# Each connection alerts on its own.
ALERT_DIMENSIONS = ("app", "connectionId")
ALERT_WINDOW = "PT15M"


def oauth_secret_name(setting: str) -> str:
    """The vault secret behind an OAuth instance setting: INF_A_B -> inf-a-b."""
    return setting.lower().replace("_", "-")


# Every setting that must be a Key Vault reference (to the settings vault), and the secret it must name.
VAULT_SECRETS = {
    **{name: oauth_secret_name(name) for name in OAUTH_SETTINGS},
    CONSOLE_SECRET_SETTING: CONSOLE_SECRET_NAME,
    NOTIFY_SECRET_SETTING: NOTIFY_SECRET_NAME,
    NOTIFY_URL_SETTING: NOTIFY_URL_SECRET_NAME,
}
# The secrets the operator sets (docs/deployment.md, "After the deployment"); the deployment writes the others.
OPERATOR_SECRETS = tuple(name for name in VAULT_SECRETS.values() if name != NOTIFY_URL_SECRET_NAME)

# The public base URL when siteUrl is empty: the Function App's default host name in the cloud deployed to
# (environment().name), which the console's redirect URI on the API registration and SITE_URL share.
APP_SERVICE_HOST_SUFFIXES = {
    "AzureCloud": "azurewebsites.net",
    "AzureUSGovernment": "azurewebsites.us",
    "AzureChinaCloud": "chinacloudsites.cn",
}
CONSOLE_CALLBACK_PATH = "/auth/callback"

# Log Analytics keeps the tamper-evident copies of the audit logs (the vaults', the tables'): the service cannot delete
# them, unlike its own audit table. Its default retention is at least this many days.
LOG_RETENTION_PARAM = "logRetentionInDays"
LOG_RETENTION_DEFAULT = 90
LOG_RETENTION_BOUNDS = (30, 730)


# ---------------------------------------------------------------------------------------------
# Reading pycep trees
# ---------------------------------------------------------------------------------------------


def render(node: Any) -> str:
    """A pycep expression as compact Bicep-like text: identity.properties.clientId, guid(a, b, c)."""
    if node is None:
        return "null"
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, (int, float, str)):
        return str(node)
    if isinstance(node, list):
        return "[" + ", ".join(render(item) for item in node) + "]"
    if isinstance(node, dict) and set(node) == {"operator"}:
        kind, operands = node["operator"]["type"], [render(v) for v in node["operator"]["operands"].values()]
        if kind == "property_accessor":
            return f"{operands[0]}.{operands[1]}"
        if kind == "index_accessor":
            return f"{operands[0]}[{operands[1]}]"
        if kind == "conditional":
            return f"{operands[0]} ? {operands[1]} : {operands[2]}"
        if kind == "not":
            return f"!{operands[0]}"
        return f"{kind}({', '.join(operands)})"
    if isinstance(node, dict) and "function" in node and len(node) == 1:
        function = node["function"]
        arguments = [render(v) for v in (function.get("parameters") or {}).values() if v is not None]
        text = f"{function['type']}({', '.join(arguments)})"
        return f"{text}.{function['property_name']}" if function.get("property_name") else text
    if isinstance(node, dict):
        return "{" + ", ".join(f"{unquote(k)}: {render(v)}" for k, v in node.items()) + "}"
    return repr(node)


def unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == "'" else key


def body(resource: Tree) -> Tree:
    """The resource's body, also for a conditional resource."""
    config: Tree = resource["config"]
    return config["config"] if "condition" in config and "config" in config else config


def condition(resource: Tree) -> Any:
    config: Tree = resource["config"]
    return config.get("condition") if "config" in config else None


def resources(files: Files, type_: str, *, existing: bool = False) -> Iterator[tuple[str, str, Tree]]:
    """(file, symbol, resource) of every resource of that type (declared ones, or existing ones)."""
    for path, tree in files.items():
        for symbol, resource in (tree.get("resources") or {}).items():
            if resource["type"].lower() == type_.lower() and bool(resource.get("existing")) == existing:
                yield path, symbol, resource


def get(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def object_keys(node: Any) -> dict[str, Any]:
    return {unquote(k): v for k, v in node.items()} if isinstance(node, dict) else {}


def expect(violations: list[str], where: str, what: str, actual: Any, wanted: Any) -> None:
    if actual != wanted:
        violations.append(f"{where}: {what} must be {wanted!r}, not {actual!r}")


def the_one(files: Files, type_: str, violations: list[str]) -> tuple[str, str, Tree] | None:
    found = list(resources(files, type_))
    if len(found) != 1:
        violations.append(f"expected exactly one {type_}, found {[(p, s) for p, s, _ in found]}")
        return None
    return found[0]


# ---------------------------------------------------------------------------------------------
# Evaluating the templates for given parameter values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A value known only in Azure (a resource's or a module's property, a deployment function), as text.

    Such values are taken to be non-empty: empty(ref) is false.
    """

    text: str


def _operands(node: Tree) -> list[Any]:
    return list(node["operands"].values())


class Scope:
    """The names of one template (parameters, variables, resource and module symbols) for given parameter values.

    pycep drops quotes, so a bare string is a name when the template declares it and a literal otherwise.
    """

    def __init__(
        self,
        tree: Tree,
        params: dict[str, Any],
        local: dict[str, Any] | None = None,
        environment: str | None = None,
    ) -> None:
        """params: the values given (already evaluated); the other parameters take their defaults. environment: the
        cloud deployed to (environment().name, e.g. AzureUSGovernment); None leaves it unknown."""
        self.tree = tree
        self.environment = environment
        declared = tree.get("parameters") or {}
        self.values: dict[str, Any] = {name: value for name, value in params.items() if name in declared}
        self.local = local or {}
        self.symbols = set(tree.get("resources") or {}) | set(tree.get("modules") or {})

    def child(self, local: dict[str, Any]) -> Scope:
        scope = Scope(self.tree, {}, {**self.local, **local}, self.environment)
        scope.values = self.values  # parameters and variables are shared, evaluated once
        return scope

    def lookup(self, name: str) -> tuple[bool, Any]:
        if name in self.local:
            return True, self.local[name]
        if name not in self.values:
            declared = (self.tree.get("parameters") or {}).get(name)
            variable = (self.tree.get("variables") or {}).get(name)
            if declared is None and variable is None:
                return (True, Ref(name)) if name in self.symbols else (False, None)
            self.values[name] = Ref(name)  # a cycle reads as unknown, not as a crash
            outer = Scope(self.tree, {}, environment=self.environment)  # no loop variable in parameters, variables
            outer.values = self.values
            self.values[name] = outer.evaluate(declared.get("default") if declared else variable["value"])
        return True, self.values[name]

    def evaluate(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float)):
            return node
        if isinstance(node, str):
            found, value = self.lookup(node)
            if found:
                return value
            return self._interpolate(node) if "${" in node else node
        if isinstance(node, list):
            return [self.evaluate(item) for item in node]
        if isinstance(node, dict) and "loop_type" in node:
            return self.loop(node)
        if isinstance(node, dict) and set(node) == {"operator"}:
            return self._operator(node["operator"])
        if isinstance(node, dict) and set(node) == {"function"}:
            return self._function(node)
        if isinstance(node, dict):
            return {unquote(key): self.evaluate(value) for key, value in node.items()}
        return Ref(render(node))

    def loop(self, node: Tree) -> list[Any]:
        """[for ...: body] as the list of its evaluated items (the if-filter applied)."""
        return [self.child(local).evaluate(node["config"]) for local in self.loop_scopes(node)]

    def loop_scopes(self, node: Tree) -> list[dict[str, Any]]:
        kind, detail = node["loop_type"]["type"], node["loop_type"]["detail"]
        if kind == "range":
            start, count = self.evaluate(detail["start_index"]), self.evaluate(detail["count"])
            if not isinstance(start, int) or not isinstance(count, int):
                raise ValueError(f"range({render(detail['start_index'])}, {render(detail['count'])}) is not known")
            items: list[tuple[int, Any]] = [(k, start + k) for k in range(count)]
            names = (
                detail.get("item_name") or detail["index_name"],
                detail["index_name"] if detail.get("item_name") else None,
            )
        elif kind in {"array", "array_index"}:
            array = self.evaluate(detail["array_name"])
            if not isinstance(array, list):
                raise ValueError(f"the loop over {render(detail['array_name'])} is not over a known array")
            items = list(enumerate(array))
            names = (detail["item_name"], detail.get("index_name"))
        else:
            raise ValueError(f"{kind} loops are not evaluated")
        scopes = []
        for index, item in items:
            local = {names[0]: item} | ({names[1]: index} if names[1] else {})
            if node.get("condition") is None or self.child(local).evaluate(node["condition"]) is True:
                scopes.append(local)
        return scopes

    def _interpolate(self, text: str) -> Any:
        """'a-${name}': each ${name} whose value is a known string is filled in; anything else stays as written."""

        def fill(match: re.Match[str]) -> str:
            found, value = self.lookup(match.group(1))
            if found and isinstance(value, (str, Ref)):
                return value.text if isinstance(value, Ref) else value
            if found and isinstance(value, int) and not isinstance(value, bool):
                return str(value)  # a loop index: 'email-${index}'
            return match.group(0)

        return Ref(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", fill, text))

    def _member(self, base: Any, path: Any) -> Any:
        """base.path, where pycep nests a.b.c as a.(b.c) and a.b[0] as a.(b[0])."""
        if isinstance(path, dict) and "operator" in path:
            inner = path["operator"]
            if inner["type"] == "property_accessor":
                first, rest = _operands(inner)
                return self._member(self._member(base, first), rest)
            if inner["type"] == "index_accessor":
                first, index = _operands(inner)
                return self._index(self._member(base, first), self.evaluate(index))
        key = str(path)
        if isinstance(base, dict):
            return base[key] if key in base else Ref(f"{render(base)}.{key}")
        if isinstance(base, Ref):
            return Ref(f"{base.text}.{key}")
        return Ref(f"{render(base)}.{key}")

    @staticmethod
    def _index(base: Any, index: Any) -> Any:
        if isinstance(base, list) and isinstance(index, int):
            return base[index]
        if isinstance(base, dict) and isinstance(index, str):
            return base.get(index, Ref(f"{render(base)}[{index}]"))
        text = base.text if isinstance(base, Ref) else render(base)
        return Ref(f"{text}[{index.text if isinstance(index, Ref) else index}]")

    def _operator(self, operator: Tree) -> Any:
        kind, operands = operator["type"], operator["operands"]
        if kind == "conditional":
            condition = self.evaluate(operands["condition"])
            if isinstance(condition, bool):
                return self.evaluate(operands["true_value" if condition else "false_value"])
            return Ref(render({"operator": operator}))
        if kind == "property_accessor":
            first, rest = _operands(operator)
            return self._member(self.evaluate(first), rest)
        if kind == "index_accessor":
            first, index = _operands(operator)
            return self._index(self.evaluate(first), self.evaluate(index))
        values = [self.evaluate(v) for v in operands.values()]
        if any(isinstance(v, Ref) for v in values):
            return Ref(render({"operator": operator}))
        if kind == "not" and isinstance(values[0], bool):
            return not values[0]
        if kind == "equals":
            return values[0] == values[1]
        if kind == "not_equals":
            return values[0] != values[1]
        if kind == "and":
            return all(values)
        if kind == "or":
            return any(values)
        arithmetic: dict[str, Callable[[int, int], int]] = {
            "add": lambda a, b: a + b,
            "substract": lambda a, b: a - b,
            "multiply": lambda a, b: a * b,
            "divide": lambda a, b: a // b,
            "modulo": lambda a, b: a % b,
        }
        if kind in arithmetic and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return arithmetic[kind](values[0], values[1])
        return Ref(render({"operator": operator}))

    def _function(self, node: Tree) -> Any:
        function = node["function"]
        kind = function["type"]
        args = [self.evaluate(v) for v in (function.get("parameters") or {}).values() if v is not None]
        if kind == "environment" and function.get("property_name") == "name" and self.environment is not None:
            return self.environment
        if kind == "resource_id":
            return Ref("resourceId(" + ", ".join(a.text if isinstance(a, Ref) else str(a) for a in args) + ")")
        if function.get("property_name") or any(isinstance(a, Ref) for a in args):
            if kind == "empty" and args and isinstance(args[0], Ref):
                return False
            if kind == "format" and isinstance(args[0], str):
                texts = [a.text if isinstance(a, Ref) else str(a) for a in args[1:]]
                return Ref(args[0].format(*texts))
            return Ref(render(node))
        if kind == "length" and isinstance(args[0], (str, list, dict)):
            return len(args[0])
        if kind == "empty":
            return args[0] in (None, "", [], {})
        if kind == "format" and isinstance(args[0], str):
            return args[0].format(*args[1:])
        if kind == "guid":
            return "guid(" + ", ".join(str(a) for a in args) + ")"
        if kind == "concat" and all(isinstance(a, list) for a in args):
            return [item for a in args for item in a]
        if kind == "concat" and all(isinstance(a, str) for a in args):
            return "".join(args)
        if kind == "string" and isinstance(args[0], (int, str)) and not isinstance(args[0], bool):
            return str(args[0])
        if kind == "ends_with" and all(isinstance(a, str) for a in args):
            return args[0].lower().endswith(args[1].lower())  # Bicep's endsWith ignores case
        if kind == "substring" and isinstance(args[0], str) and all(isinstance(a, int) for a in args[1:]):
            start = args[1]
            return args[0][start : start + args[2]] if len(args) > 2 else args[0][start:]
        if kind == "contains" and isinstance(args[0], dict) and isinstance(args[1], str):
            return any(key.lower() == args[1].lower() for key in args[0])  # object keys: case-insensitive
        if kind == "contains" and isinstance(args[0], (list, str)):
            return args[1] in args[0]
        return Ref(render(node))


@dataclass(frozen=True)
class Instance:
    """One deployed resource: its file, symbol (symbol[i] in a loop), evaluated body, and the main.bicep module
    symbol that deployed it (main.bicep for its own resources): one file can be deployed by two modules."""

    path: str
    symbol: str
    type: str
    body: dict[str, Any]
    scope: Scope
    module: str = "main.bicep"


class Deployment:
    """infra/main.bicep and the modules it calls (one level, as here), evaluated for given parameter values."""

    def __init__(self, files: Files, params: dict[str, Any], environment: str | None = None) -> None:
        """environment: the cloud deployed to, environment().name (AzureCloud, AzureUSGovernment, AzureChinaCloud)."""
        self.files = files
        self.main = Scope(files.get("main.bicep") or {}, params, environment=environment)
        self.modules: dict[str, tuple[str, Scope] | None] = {}
        for symbol, module in ((files.get("main.bicep") or {}).get("modules") or {}).items():
            config = module["config"]
            condition = config.get("condition") if "config" in config else None
            body_ = config["config"] if "config" in config and "condition" in config else config
            path = get(module, "detail", "path")
            if (condition is not None and self.main.evaluate(condition) is not True) or path not in files:
                self.modules[symbol] = None  # not deployed for these parameters (or not a local module)
                continue
            module_params = self.main.evaluate(body_.get("params") or {})
            self.modules[symbol] = (path, Scope(files[path], module_params, environment=environment))

    def module(self, path: str) -> tuple[str, Scope] | None:
        """The main.bicep symbol and scope of the deployed module of that file, if it is deployed."""
        for symbol, deployed in self.modules.items():
            if deployed is not None and deployed[0] == path:
                return symbol, deployed[1]
        return None

    def scopes(self) -> Iterator[tuple[str, Scope]]:
        for _, path, scope in self.module_scopes():
            yield path, scope

    def module_scopes(self) -> Iterator[tuple[str, str, Scope]]:
        """(main.bicep's module symbol, or main.bicep itself; file; scope) of main.bicep and each deployed module."""
        yield "main.bicep", "main.bicep", self.main
        for symbol, deployed in self.modules.items():
            if deployed is not None:
                yield symbol, *deployed

    def instances(self, type_: str, *, existing: bool | None = None) -> list[Instance]:
        """Every deployed instance of resources of that type (declared or existing ones, or both), bodies evaluated."""
        found = []
        for module, path, scope in self.module_scopes():
            for symbol, resource in (scope.tree.get("resources") or {}).items():
                if resource["type"].lower() != type_.lower():
                    continue
                if existing is not None and bool(resource.get("existing")) != existing:
                    continue
                config = resource["config"]
                if "loop_type" in config:
                    for index, local in enumerate(scope.loop_scopes(config)):
                        child = scope.child(local)
                        found.append(
                            Instance(
                                path,
                                f"{symbol}[{index}]",
                                resource["type"],
                                child.evaluate(config["config"]),
                                child,
                                module,
                            )
                        )
                    continue
                if "condition" in config and "config" in config:
                    if scope.evaluate(config["condition"]) is not True:
                        continue
                    config = config["config"]
                found.append(Instance(path, symbol, resource["type"], scope.evaluate(config), scope, module))
        return found


def ref_text(value: Any) -> str:
    return value.text if isinstance(value, Ref) else render(value)


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


def function_app_rules(files: Files) -> list[str]:
    """Flex Consumption, Python 3.11, HTTPS only, TLS 1.2+, no FTP, runs as the user-assigned identity."""
    v: list[str] = []
    site = the_one(files, "Microsoft.Web/sites", v)
    if site is None:
        return v
    path, symbol, resource = site
    where, config = f"{path}:{symbol}", body(resource)
    props = config.get("properties") or {}
    site_config = props.get("siteConfig") or {}
    if "functionapp" not in str(config.get("kind", "")):
        v.append(f"{where}: kind must be a functionapp kind, not {config.get('kind')!r}")
    expect(v, where, "httpsOnly", props.get("httpsOnly"), True)
    for key in ("minTlsVersion", "scmMinTlsVersion"):
        if site_config.get(key) not in {"1.2", "1.3"}:
            v.append(f"{where}: siteConfig.{key} must be 1.2 or 1.3, not {site_config.get(key)!r}")
    expect(v, where, "siteConfig.ftpsState", site_config.get("ftpsState"), "Disabled")
    if site_config.get("remoteDebuggingEnabled") is True:
        v.append(f"{where}: remote debugging must stay off")
    identity = config.get("identity") or {}
    expect(v, where, "identity.type", identity.get("type"), "UserAssigned")
    assigned = [render(k) for k in object_keys(identity.get("userAssignedIdentities"))]
    if len(assigned) != 1:
        v.append(f"{where}: exactly one user-assigned identity expected, not {assigned}")
    elif render(props.get("keyVaultReferenceIdentity")) != assigned[0].strip("'${}"):
        v.append(f"{where}: keyVaultReferenceIdentity must be the user-assigned identity ({assigned[0]})")
    tags = config.get("tags")
    if "azd-service-name: api" not in render(tags):
        v.append(f"{where}: tags must carry azd-service-name: api, not {render(tags)}")
    flex = props.get("functionAppConfig") or {}
    expect(v, where, "functionAppConfig.runtime", flex.get("runtime"), {"name": "python", "version": "3.11"})
    scale = flex.get("scaleAndConcurrency") or {}
    for key in ("instanceMemoryMB", "maximumInstanceCount"):
        if key not in scale:
            v.append(f"{where}: functionAppConfig.scaleAndConcurrency.{key} missing")
    storage = get(flex, "deployment", "storage") or {}
    expect(v, where, "deployment storage type", storage.get("type"), "blobContainer")
    auth = storage.get("authentication") or {}
    expect(v, where, "deployment storage authentication", auth.get("type"), "UserAssignedIdentity")
    if not auth.get("userAssignedIdentityResourceId"):
        v.append(f"{where}: deployment storage must name the user-assigned identity")
    plan = the_one(files, "Microsoft.Web/serverfarms", v)
    if plan is not None:
        plan_path, plan_symbol, plan_resource = plan
        expect(v, where, "serverFarmId", render(props.get("serverFarmId")), f"{plan_symbol}.id")
        sku = body(plan_resource).get("sku") or {}
        expect(v, f"{plan_path}:{plan_symbol}", "sku", sku, {"tier": "FlexConsumption", "name": "FC1"})
    return v


def publishing_credentials_rules(files: Files) -> list[str]:
    """Basic-auth publishing (FTP and SCM) off."""
    v: list[str] = []
    policies = {
        body(r).get("name"): body(r)
        for _, _, r in resources(files, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    }
    for name in ("ftp", "scm"):
        if name not in policies:
            v.append(f"basicPublishingCredentialsPolicies '{name}' missing")
        else:
            expect(
                v,
                f"basicPublishingCredentialsPolicies '{name}'",
                "allow",
                get(policies[name], "properties", "allow"),
                False,
            )
    return v


def storage_rules(files: Files) -> list[str]:
    """No shared keys, no public blobs, TLS 1.2, HTTPS only, a private deployment container."""
    v: list[str] = []
    found = the_one(files, STORAGE, v)
    if found is not None:
        path, symbol, resource = found
        props = body(resource).get("properties") or {}
        where = f"{path}:{symbol}"
        expect(v, where, "allowSharedKeyAccess", props.get("allowSharedKeyAccess"), False)
        expect(v, where, "allowBlobPublicAccess", props.get("allowBlobPublicAccess"), False)
        expect(v, where, "minimumTlsVersion", props.get("minimumTlsVersion"), "TLS1_2")
        expect(v, where, "supportsHttpsTrafficOnly", props.get("supportsHttpsTrafficOnly"), True)
    containers = list(resources(files, "Microsoft.Storage/storageAccounts/blobServices/containers"))
    if not containers:
        v.append("the deployment blob container is missing")
    for path, symbol, resource in containers:
        expect(v, f"{path}:{symbol}", "publicAccess", get(body(resource), "properties", "publicAccess"), "None")
    return v


def key_vault_rules(files: Files) -> list[str]:
    """Azure RBAC, soft delete with a retention, purge protection."""
    v: list[str] = []
    found = the_one(files, VAULT, v)
    if found is not None:
        path, symbol, resource = found
        props = body(resource).get("properties") or {}
        where = f"{path}:{symbol}"
        expect(v, where, "enableRbacAuthorization", props.get("enableRbacAuthorization"), True)
        expect(v, where, "enableSoftDelete", props.get("enableSoftDelete"), True)
        expect(v, where, "enablePurgeProtection", props.get("enablePurgeProtection"), True)
        retention = props.get("softDeleteRetentionInDays")
        if retention is None or (isinstance(retention, int) and not 7 <= retention <= 90):
            v.append(f"{where}: softDeleteRetentionInDays must be set (7-90), not {retention!r}")
        if props.get("accessPolicies"):
            v.append(f"{where}: access policies are not used with Azure RBAC")
    return v


def monitoring_rules(files: Files) -> list[str]:
    """Application Insights and Log Analytics accept Microsoft Entra ID only."""
    v: list[str] = []
    found = the_one(files, APP_INSIGHTS, v)
    if found is not None:
        path, symbol, resource = found
        expect(v, f"{path}:{symbol}", "DisableLocalAuth", get(body(resource), "properties", "DisableLocalAuth"), True)
    found = the_one(files, "Microsoft.OperationalInsights/workspaces", v)
    if found is not None:
        path, symbol, resource = found
        local = get(body(resource), "properties", "features", "disableLocalAuth")
        expect(v, f"{path}:{symbol}", "features.disableLocalAuth", local, True)
    return v


def _scope_kind(tree: Tree, scope: Any) -> str | None:
    """The resource type a role assignment's scope symbol names; for a vault, which of the two (by its name param)."""
    resource = (tree.get("resources") or {}).get(scope) if isinstance(scope, str) else None
    if resource is None:
        return None
    if resource["type"] == VAULT:
        name = render(body(resource).get("name"))
        return VAULT_BY_PARAM.get(name, f"{VAULT} named {name}")
    return str(resource["type"])


def role_assignment_rules(files: Files) -> list[str]:
    """The identity has exactly its six roles on their resources (Secrets Officer on the credential vault, Secrets
    User on the settings vault); the deploying user has Secrets Officer on the settings vault and nothing else, so no
    role on the credential vault; names are guid(scope.id, principal, role)."""
    v: list[str] = []
    identity_roles: list[tuple[str, str]] = []
    user_roles: list[tuple[str, str]] = []
    for path, tree in files.items():
        assignments = [(s, r) for s, r in (tree.get("resources") or {}).items() if r["type"] == ROLE_ASSIGNMENT]
        if not assignments:
            continue
        role_map = object_keys(get(tree, "variables", "roleDefinitions", "value"))
        if not role_map:
            v.append(f"{path}: role assignments need a named roleDefinitions map")
        for name, guid in role_map.items():
            if ROLE_GUIDS.get(name) != guid:
                v.append(f"{path}: roleDefinitions[{name!r}] = {guid!r} is not an allowed role GUID")
        for symbol, resource in assignments:
            where = f"{path}:{symbol}"
            config = body(resource)
            props = config.get("properties") or {}
            role_ref = get(props, "roleDefinitionId", "function", "parameters", "resource_name_1")
            if get(props, "roleDefinitionId", "function", "type") != "subscription_resource_id" or (
                get(props, "roleDefinitionId", "function", "parameters", "resource_type")
                != "Microsoft.Authorization/roleDefinitions"
            ):
                v.append(
                    f"{where}: roleDefinitionId must be "
                    "subscriptionResourceId('Microsoft.Authorization/roleDefinitions', ...)"
                )
                continue
            rendered_ref = render(role_ref)
            match = re.fullmatch(r"roleDefinitions\[(.+)\]", rendered_ref)
            role = (
                unquote(match.group(1))
                if match
                else next((n for n, g in ROLE_GUIDS.items() if g == rendered_ref), None)
            )
            if role is None or role not in role_map:
                v.append(f"{where}: role {rendered_ref} is not one of {sorted(ROLE_GUIDS)}")
                continue
            scope = config.get("scope")
            scope_type = _scope_kind(tree, scope)
            principal = render(props.get("principalId"))
            wanted_name = f"guid({scope}.id, {principal}, {rendered_ref})"
            if render(config.get("name")) != wanted_name:
                v.append(f"{where}: name must be {wanted_name}, not {render(config.get('name'))}")
            if principal == IDENTITY_PRINCIPAL_PARAM:
                identity_roles.append((role, scope_type or f"<scope {scope!r}>"))
                expect(v, where, "principalType", props.get("principalType"), "ServicePrincipal")
                if condition(resource) is not None:
                    v.append(f"{where}: the identity's role must not be conditional")
            elif principal == USER_PRINCIPAL_PARAM:
                user_roles.append((role, scope_type or f"<scope {scope!r}>"))
                if render(condition(resource)) != f"!empty({USER_PRINCIPAL_PARAM})":
                    v.append(f"{where}: the user's role must be conditional on !empty({USER_PRINCIPAL_PARAM})")
            else:
                v.append(f"{where}: unexpected principal {principal}")
    if sorted(identity_roles) != sorted(IDENTITY_ROLES):
        missing = IDENTITY_ROLES - set(identity_roles)
        extra = [r for r in identity_roles if r not in IDENTITY_ROLES or identity_roles.count(r) > 1]
        v.append(f"identity role assignments: missing {sorted(missing)}, unexpected {sorted(set(extra))}")
    if sorted(user_roles) != sorted(USER_ROLES):
        v.append(f"user role assignments must be exactly {sorted(USER_ROLES)}, not {sorted(user_roles)}")
    return v


def rbac_wiring_rules(files: Files) -> list[str]:
    """main.bicep gives rbac.bicep the user-assigned identity's principal id and the deploying user's."""
    v: list[str] = []
    main = files.get("main.bicep") or {}
    modules = {s: m for s, m in (main.get("modules") or {}).items()}
    by_path = {get(m, "detail", "path"): s for s, m in modules.items()}
    rbac, identity = by_path.get("app/rbac.bicep"), by_path.get("modules/identity.bicep")
    if rbac is None or identity is None:
        return [f"main.bicep must use app/rbac.bicep and modules/identity.bicep, uses {sorted(filter(None, by_path))}"]
    params = get(modules[rbac], "config", "params") or {}
    expect(
        v,
        f"main.bicep:{rbac}",
        IDENTITY_PRINCIPAL_PARAM,
        render(params.get(IDENTITY_PRINCIPAL_PARAM)),
        f"{identity}.outputs.principalId",
    )
    expect(v, f"main.bicep:{rbac}", USER_PRINCIPAL_PARAM, render(params.get(USER_PRINCIPAL_PARAM)), "principalId")
    identity_tree = files.get("modules/identity.bicep") or {}
    uamis = [s for s, r in (identity_tree.get("resources") or {}).items() if r["type"] == UAMI and not r["existing"]]
    output = render(get(identity_tree, "outputs", "principalId", "value"))
    if len(uamis) != 1 or output != f"{uamis[0]}.properties.principalId":
        v.append(f"modules/identity.bicep: output principalId must be the user-assigned identity's, not {output}")
    return v


def _vault_symbols(tree: Tree) -> dict[str, str]:
    """{name parameter: symbol} of the existing vaults a module names by a parameter (keyVaultName, ...)."""
    return {
        render(body(resource).get("name")): symbol
        for symbol, resource in (tree.get("resources") or {}).items()
        if resource["type"] == VAULT and resource.get("existing")
    }


def vault_wiring_rules(files: Files) -> list[str]:
    """Two vaults, both modules/keyvault.bicep (RBAC, soft delete, purge protection, audit log, private endpoint),
    always deployed: app/rbac.bicep and app/api.bicep get the same credential vault as keyVaultName and the same
    settings vault as settingsKeyVaultName, two different vaults; the outputs name each. A vault secret the
    deployment writes goes to the settings vault only, from a @secure() parameter."""
    v: list[str] = []
    main = files.get("main.bicep") or {}
    modules = main.get("modules") or {}
    vaults = sorted(s_ for s_, m in modules.items() if get(m, "detail", "path") == KEY_VAULT_MODULE)
    if len(vaults) != 2:
        v.append(f"main.bicep must deploy {KEY_VAULT_MODULE} twice (the credential and the settings vault): {vaults}")
    for symbol in vaults:
        if get(modules[symbol], "config", "condition") is not None:
            v.append(f"main.bicep:{symbol}: a vault is always deployed")
    chosen: dict[str, set[str]] = {}
    for consumer in ("app/rbac.bicep", "app/api.bicep"):
        symbol = _module_symbol(files, consumer)
        if symbol is None:
            v.append(f"main.bicep must deploy {consumer} once")
            continue
        params = get(modules[symbol], "config", "params") or {}
        named = _vault_symbols(files.get(consumer) or {})
        for param in VAULT_BY_PARAM:
            value = render(params.get(param))
            match = re.fullmatch(r"(\w+)\.outputs\.name", value)
            if match is None or match.group(1) not in vaults:
                v.append(
                    f"main.bicep:{symbol}: {param} must be a {KEY_VAULT_MODULE} module's outputs.name, not {value}"
                )
            else:
                chosen.setdefault(param, set()).add(match.group(1))
            if param not in named:
                v.append(f"{consumer}: needs an existing {VAULT} named by param {param}")
    for param, found in chosen.items():
        if len(found) != 1:
            v.append(f"main.bicep: {param} names different vaults in app/rbac.bicep and app/api.bicep: {sorted(found)}")
    credential, settings = chosen.get(CREDENTIAL_VAULT_PARAM, set()), chosen.get(SETTINGS_VAULT_PARAM, set())
    if credential & settings:
        v.append(f"main.bicep: the settings vault must not be the credential vault ({sorted(credential & settings)})")
    outputs = main.get("outputs") or {}
    for param, (name_output, uri_output) in VAULT_OUTPUTS.items():
        symbol = next(iter(chosen.get(param) or {"<none>"}))
        expect(v, "main.bicep", f"output {name_output}", render(get(outputs, name_output, "value")),
               f"{symbol}.outputs.name")
        expect(v, "main.bicep", f"output {uri_output}", render(get(outputs, uri_output, "value")),
               f"{symbol}.outputs.uri")
    for path, tree in files.items():
        named = _vault_symbols(tree)
        secure = {n for n, p in (tree.get("parameters") or {}).items() if "secure" in _decorators(p)}
        for symbol, resource in _declared(tree, VAULT_SECRET):
            config = body(resource)
            parent = render(config.get("parent"))
            if parent != named.get(SETTINGS_VAULT_PARAM):
                v.append(f"{path}:{symbol}: a secret the deployment writes belongs in the settings vault, not {parent}")
            value = get(config, "properties", "value")
            if not (isinstance(value, str) and value in secure):
                v.append(f"{path}:{symbol}: the secret's value must be a @secure() parameter, not {render(value)}")
    return v


def parameter_description_rules(files: Files) -> list[str]:
    """Every parameter says 'Required. ...' (no default) or 'Optional. ...' (a default)."""
    v: list[str] = []
    for path, tree in files.items():
        for name, param in (tree.get("parameters") or {}).items():
            descriptions = [d.get("argument") for d in param.get("decorators") or [] if d.get("type") == "description"]
            text = descriptions[0] if descriptions else None
            has_default = param.get("default") is not None
            if not isinstance(text, str) or not text.startswith(("Required. ", "Optional. ")):
                v.append(f"{path}: param {name} needs @description('Required. ...') or ('Optional. ...'), has {text!r}")
            elif text.startswith("Required. ") == has_default:
                v.append(
                    f"{path}: param {name} is described {text.split('.')[0]} "
                    f"but {'has' if has_default else 'has no'} default"
                )
    return v


def output_description_rules(files: Files) -> list[str]:
    """Every output of every template says what it is (@description), as the modules' outputs already do."""
    v: list[str] = []
    for path, tree in files.items():
        for name, output in (tree.get("outputs") or {}).items():
            texts = [d.get("argument") for d in output.get("decorators") or [] if d.get("type") == "description"]
            if not texts or not isinstance(texts[0], str) or not texts[0].strip():
                v.append(f"{path}: output {name} needs a @description")
    return v


def app_settings_rules(files: Files) -> list[str]:
    """Every setting the app reads is set; secrets are Key Vault references and nothing else."""
    v: list[str] = []
    configs = [
        (p, s, r) for p, s, r in resources(files, "Microsoft.Web/sites/config") if body(r).get("name") == "appsettings"
    ]
    if len(configs) != 1:
        return [f"expected one Microsoft.Web/sites/config 'appsettings', found {len(configs)}"]
    path, symbol, resource = configs[0]
    where = f"{path}:{symbol}"
    settings = body(resource).get("properties")
    if not isinstance(settings, dict) or "function" in settings or "operator" in settings:
        return [f"{where}: properties must be a literal object so every setting can be checked, not {render(settings)}"]
    settings = object_keys(settings)
    for name in REQUIRED_SETTINGS:
        if name not in settings:
            v.append(f"{where}: setting {name} missing")
    for name in FORBIDDEN_SETTINGS:
        if name in settings:
            v.append(f"{where}: setting {name} must not be set (Flex Consumption / identity-based storage)")
    vaults = _vault_symbols(files.get(path) or {})
    credential_uri = f"{vaults.get(CREDENTIAL_VAULT_PARAM)}.properties.vaultUri"
    settings_uri = f"{vaults.get(SETTINGS_VAULT_PARAM)}.properties.vaultUri"
    expect(v, where, "KEY_VAULT_URL (the credential vault)", render(settings.get("KEY_VAULT_URL")), credential_uri)
    for name, value in settings.items():
        text = render(value)
        if name in VAULT_SECRETS or (SECRETISH.search(name) and name not in NOT_SECRETS):
            v += _key_vault_reference_violations(where, name, value, settings_uri)
        if re.search(r"AccountKey=|SharedAccessSignature=|InstrumentationKey=|list_?keys\(", text, re.IGNORECASE):
            v.append(f"{where}: {name} embeds a key: {text!r}")
    expected = {
        "AzureWebJobsStorage__credential": "managedidentity",
        "STATE_STORAGE": "AzureWebJobsStorage",
        "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "true",
    }
    for name, wanted in expected.items():
        if name in settings:
            expect(v, where, name, settings[name], wanted)
    client_id = render(settings.get("AZURE_CLIENT_ID"))
    if not client_id.endswith(".properties.clientId"):
        v.append(f"{where}: AZURE_CLIENT_ID must be the user-assigned identity's client id, not {client_id}")
    expect(v, where, "AzureWebJobsStorage__clientId", render(settings.get("AzureWebJobsStorage__clientId")), client_id)
    expect(
        v,
        where,
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
        settings.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING"),
        f"ClientId=${{{client_id}}};Authorization=AAD",
    )
    return v


def _branches(value: Any) -> list[Any]:
    """The values a setting can take: itself, or each branch of `condition ? a : b` (nested ones too)."""
    operator = value.get("operator") if isinstance(value, dict) and set(value) == {"operator"} else None
    if isinstance(operator, dict) and operator.get("type") == "conditional":
        operands = operator["operands"]
        return _branches(operands["true_value"]) + _branches(operands["false_value"])
    return [value]


def _key_vault_reference_violations(where: str, name: str, value: Any, settings_vault_uri: str) -> list[str]:
    """A secret setting is a reference to its secret in the settings vault (the operator sets it there, and may
    not touch the credential vault); `condition ? reference : ''` may leave it empty (a feature that is off), nothing
    else may."""
    v: list[str] = []
    branches = _branches(value)
    references = [b for b in branches if b != ""]
    if not references:
        return [f"{where}: {name} must be a @Microsoft.KeyVault(SecretUri=...) reference, not {render(value)!r}"]
    for branch in references:
        match = KEY_VAULT_REFERENCE.match(branch) if isinstance(branch, str) else None
        if match is None:
            v.append(f"{where}: {name} must be a @Microsoft.KeyVault(SecretUri=...) reference, not {render(branch)!r}")
            continue
        if name in VAULT_SECRETS and match.group(1) != VAULT_SECRETS[name]:
            v.append(f"{where}: {name} must reference secret {VAULT_SECRETS[name]}, not {match.group(1)}")
        if not branch.startswith(f"@Microsoft.KeyVault(SecretUri=${{{settings_vault_uri}}}secrets/"):
            v.append(f"{where}: {name} must reference the settings vault ({settings_vault_uri}), not {branch!r}")
    return v


def main_template_rules(files: Files) -> list[str]:
    """Subscription scope, a resource group, azd tags, uniqueString names, the outputs operators need."""
    v: list[str] = []
    main = files.get("main.bicep") or {}
    expect(v, "main.bicep", "targetScope", get(main, "globals", "scope", "value"), "subscription")
    groups = [s for s, r in (main.get("resources") or {}).items() if r["type"] == "Microsoft.Resources/resourceGroups"]
    if len(groups) != 1:
        v.append(f"main.bicep must create one resource group, creates {groups}")
    tags = object_keys(get(main, "variables", "tags", "value"))
    expect(v, "main.bicep", "tags['azd-env-name']", tags.get("azd-env-name"), "environmentName")
    if "unique_string(" not in render(get(main, "variables", "resourceToken", "value")):
        v.append("main.bicep: resourceToken must come from uniqueString(...)")
    for symbol, module in (main.get("modules") or {}).items():
        config = get(module, "config") or {}
        params = (config["config"] if "condition" in config and "config" in config else config).get("params") or {}
        declared = (files.get(get(module, "detail", "path") or "") or {}).get("parameters") or {}
        if "tags" in declared and params.get("tags") != "tags":
            v.append(f"main.bicep:{symbol}: pass tags: tags")
    outputs = main.get("outputs") or {}
    for name in (
        "AZURE_RESOURCE_GROUP",
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_URL",
        "AZURE_KEY_VAULT_ENDPOINT",
        "OAUTH_REDIRECT_URI",
    ):
        if name not in outputs:
            v.append(f"main.bicep: output {name} missing")
    redirect = render(get(outputs, "OAUTH_REDIRECT_URI", "value"))
    if not redirect.endswith(REDIRECT_PATH):
        v.append(f"main.bicep: OAUTH_REDIRECT_URI must end with {REDIRECT_PATH}, is {redirect}")
    for name, output in outputs.items():
        if SECRETISH.search(name) and "KEY_VAULT" not in name:
            v.append(f"main.bicep: output {name} looks like a secret")
        if re.search(r"list_?keys\(", render(output.get("value")), re.IGNORECASE):
            v.append(f"main.bicep: output {name} exposes keys")
    return v


def _declared(tree: Tree, type_: str) -> list[tuple[str, Tree]]:
    return [
        (symbol, r)
        for symbol, r in (tree.get("resources") or {}).items()
        if r["type"].lower() == type_.lower() and not r.get("existing")
    ]


def _module_symbol(files: Files, path: str) -> str | None:
    modules = (files.get("main.bicep") or {}).get("modules") or {}
    found = [symbol for symbol, m in modules.items() if get(m, "detail", "path") == path]
    return found[0] if len(found) == 1 else None


def app_role_violations(roles: Any, where: str) -> list[str]:
    """The five roles with fixed literal GUIDs, each also limited to each app, for people and daemons."""
    if not isinstance(roles, list) or not all(isinstance(r, dict) for r in roles):
        return [f"{where}: app roles must be a list of objects known before deployment, not {ref_text(roles)}"]
    v: list[str] = []
    by_value = {r.get("value"): r for r in roles}
    expected = set(API_ROLES) | set(APP_SCOPED_ROLES)
    missing, extra = sorted(expected - set(by_value), key=str), sorted(set(by_value) - expected, key=str)
    if missing or extra:
        v.append(f"{where}: app roles missing {missing}, unexpected {extra}")
    if len(by_value) != len(roles):
        v.append(f"{where}: app role values must be unique")
    ids = [r.get("id") for r in roles]
    if len(set(map(str, ids))) != len(ids):
        v.append(f"{where}: app role ids must be unique")
    for role in roles:
        value = role.get("value")
        expect(v, f"{where}: role {value}", "allowedMemberTypes", role.get("allowedMemberTypes"), ROLE_MEMBER_TYPES)
        expect(v, f"{where}: role {value}", "isEnabled", role.get("isEnabled"), True)
        for key in ("description", "displayName"):
            if not isinstance(role.get(key), str) or not role[key].strip():
                v.append(f"{where}: role {value} needs a {key}")
        role_id = role.get("id")
        if value in API_ROLES and not (isinstance(role_id, str) and GUID.match(role_id)):
            v.append(f"{where}: role {value} needs a fixed literal GUID id, not {ref_text(role_id)}")
        if value in APP_SCOPED_ROLES and not (
            isinstance(role_id, str) and (GUID.match(role_id) or role_id.startswith("guid("))
        ):
            v.append(f"{where}: role {value} needs a fixed or guid()-derived id, not {ref_text(role_id)}")
    return v


def api_registration_rules(files: Files) -> list[str]:
    """The API registration (Graph Bicep extension): the roles, v2 tokens, api:// URI, role assignment required."""
    v: list[str] = []
    symbol = _module_symbol(files, API_REGISTRATION_MODULE)
    main = files.get("main.bicep") or {}
    if symbol is None:
        return [f"main.bicep must deploy {API_REGISTRATION_MODULE} once"]
    expect(
        v,
        f"main.bicep:{symbol}",
        "condition",
        get(main, "modules", symbol, "config", "condition"),
        "deployApiRegistration",
    )
    deployment = Deployment(files, {"deployApiRegistration": True})
    deployed = deployment.module(API_REGISTRATION_MODULE)
    if deployed is None:
        return [*v, f"main.bicep:{symbol} is not deployed with deployApiRegistration=true"]
    path, scope = API_REGISTRATION_MODULE, deployed[1]
    tree = files[path]
    roles = scope.lookup("appRoles")[1]
    v += app_role_violations(roles, f"main.bicep:{symbol} appRoles")
    expect(
        v,
        "main.bicep",
        "output AUTH_APP_ROLES",
        deployment.main.evaluate(get(main, "outputs", "AUTH_APP_ROLES", "value")),
        roles,
    )
    if GRAPH_EXTENSION not in (tree.get("extensions") or []):
        v.append(f"{path}: must declare `extension {GRAPH_EXTENSION}` (Microsoft.Graph resources need it)")
    others = [r["type"] for r in (tree.get("resources") or {}).values() if not r["type"].startswith("Microsoft.Graph/")]
    if others:
        v.append(f"{path}: holds Microsoft.Graph resources only (checkov skips this file), not {others}")
    applications = _declared(tree, GRAPH_APPLICATION)
    principals = _declared(tree, GRAPH_SERVICE_PRINCIPAL)
    if len(applications) != 1 or len(principals) != 1:
        return [
            *v,
            f"{path}: one {GRAPH_APPLICATION} and one {GRAPH_SERVICE_PRINCIPAL}, not {applications} / {principals}",
        ]
    app_symbol, application = applications[0]
    app = scope.evaluate(body(application))
    where = f"{path}:{app_symbol}"
    expect(v, where, "appRoles", app.get("appRoles"), roles)
    expect(v, where, "signInAudience", app.get("signInAudience"), "AzureADMyOrg")
    expect(v, where, "api.requestedAccessTokenVersion", get(app, "api", "requestedAccessTokenVersion"), 2)
    unique_name = scope.lookup("uniqueName")[1]
    # The tenant's id in the URI: tenants that restrict identifier URIs to patterns holding a unique tenant
    # identifier (uriAdditionWithoutUniqueTenantIdentifier) refuse api://<string> (review R).
    identifier_uri = Ref(f"api://${{tenant().tenantId}}/{ref_text(unique_name)}")
    expect(v, where, "identifierUris", app.get("identifierUris"), [identifier_uri])
    expect(
        v,
        "main.bicep",
        "output AUTH_IDENTIFIER_URI",
        deployment.main.evaluate(get(main, "outputs", "AUTH_IDENTIFIER_URI", "value")),
        identifier_uri,
    )
    scopes = get(app, "api", "oauth2PermissionScopes") or []
    if not any(
        isinstance(s_, dict)
        and s_.get("value") == "user_impersonation"
        and s_.get("type") == "Admin"  # no user consents a client of their choosing (consent phishing: review R)
        and s_.get("isEnabled") is True
        and GUID.match(str(s_.get("id")))
        for s_ in scopes
    ):
        v.append(f"{where}: api.oauth2PermissionScopes must hold user_impersonation (type Admin, enabled, fixed GUID)")
    sp_symbol, principal = principals[0]
    sp = body(principal)
    expect(v, f"{path}:{sp_symbol}", "appId", render(sp.get("appId")), f"{app_symbol}.appId")
    expect(v, f"{path}:{sp_symbol}", "appRoleAssignmentRequired", sp.get("appRoleAssignmentRequired"), True)
    expect(v, path, "output appId", render(get(tree, "outputs", "appId", "value")), f"{app_symbol}.appId")
    return v


def cloud_settings_rules(files: Files) -> list[str]:
    """AZURE_CLOUD follows the azureCloud parameter; AZURE_AUTHORITY_HOST and GRAPH_ENDPOINT stay empty (the
    cloud's) unless given; FEDERATION_IDENTITY_* are the app's user-assigned identity's ids."""
    v: list[str] = []
    for params, cloud, authority in (
        ({"azureCloud": "AzureUSGovernment"}, "AzureUSGovernment", ""),
        ({"azureCloud": "AzureChinaCloud", "authorityHost": "https://login.example"}, "AzureChinaCloud",
         "https://login.example"),
    ):
        deployment = Deployment(files, params)
        settings = [
            i for i in deployment.instances("Microsoft.Web/sites/config") if i.body.get("name") == "appsettings"
        ]
        if len(settings) != 1:
            return [*v, f"{params}: expected one deployed appsettings config, found {len(settings)}"]
        props = settings[0].body.get("properties") or {}
        where = f"{settings[0].path}:{settings[0].symbol} with {params}"
        expect(v, where, "AZURE_CLOUD", props.get("AZURE_CLOUD"), cloud)
        expect(v, where, "AZURE_AUTHORITY_HOST", props.get("AZURE_AUTHORITY_HOST"), authority)
        expect(v, where, "GRAPH_ENDPOINT", props.get("GRAPH_ENDPOINT"), "")
        for name, prop in FEDERATION_SETTINGS.items():
            text = ref_text(props.get(name))
            if not (text.startswith("identity.") and text.endswith(f"properties.{prop}")):
                v.append(f"{where}: {name} must be the user-assigned identity's {prop}, not {text}")
    return v


def auth_settings_rules(files: Files) -> list[str]:
    """AUTH_TENANT_ID: the tenant; AUTH_AUDIENCE: the registration's appId (or the hook's); AUDIT_RETENTION_DAYS."""
    v: list[str] = []
    registration = _module_symbol(files, API_REGISTRATION_MODULE)
    hook_app_id = "00000000-0000-0000-0000-0000000000aa"
    cases = [
        ({"deployApiRegistration": True}, Ref(f"{registration}.outputs.appId"), "365"),
        ({"deployApiRegistration": False, "authAudience": hook_app_id, "auditRetentionDays": 90}, hook_app_id, "90"),
    ]
    for params, audience, retention in cases:
        deployment = Deployment(files, params)
        settings = [
            i for i in deployment.instances("Microsoft.Web/sites/config") if i.body.get("name") == "appsettings"
        ]
        if len(settings) != 1:
            return [*v, f"{params}: expected one deployed appsettings config, found {len(settings)}"]
        props = settings[0].body.get("properties") or {}
        where = f"{settings[0].path}:{settings[0].symbol} with {params}"
        expect(v, where, "AUTH_AUDIENCE", props.get("AUTH_AUDIENCE"), audience)
        expect(v, where, "AUDIT_RETENTION_DAYS", props.get("AUDIT_RETENTION_DAYS"), retention)
        tenant = ref_text(props.get("AUTH_TENANT_ID"))
        if not (tenant.startswith("tenant()") and "tenantId" in tenant):
            v.append(f"{where}: AUTH_TENANT_ID must be tenant().tenantId, not {tenant}")
        outputs = (files.get("main.bicep") or {}).get("outputs") or {}
        for name in ("AUTH_TENANT_ID", "AUTH_AUDIENCE", "AUTH_IDENTIFIER_URI", "AUTH_APP_ROLES"):
            if name not in outputs:
                v.append(f"main.bicep: output {name} missing")
        output = deployment.main.evaluate(get(outputs, "AUTH_AUDIENCE", "value"))
        expect(v, f"main.bicep with {params}", "output AUTH_AUDIENCE", output, audience)
    return v


WEBHOOK_SAMPLE = "https://example.invalid/workflows/app-connections"
# Parameter -> (minValue, maxValue, default): the bounds the service reads the setting with (shared/settings.py).
HEALTH_PARAMETER_BOUNDS = {"healthCheckIntervalHours": (1, 720, 24), "expiryWarningDays": (1, 365, 30)}
HEALTH_SWEEP_DEFAULT = "0 0 * * * *"


def _decorators(param: Tree) -> dict[str, Any]:
    return {d.get("type"): d.get("argument") for d in param.get("decorators") or []}


def health_settings_rules(files: Files) -> list[str]:
    """The health settings follow main.bicep's parameters (bounded as the service reads them); the webhook URL is a
    secure parameter; NOTIFY_WEBHOOK_SECRET references the vault's notify-webhook-secret exactly when a webhook is
    set, and is empty otherwise."""
    v: list[str] = []
    for path in ("main.bicep", "app/api.bicep"):
        params = (files.get(path) or {}).get("parameters") or {}
        for name, (low, high, default) in HEALTH_PARAMETER_BOUNDS.items():
            if name not in params:
                v.append(f"{path}: param {name} missing")
                continue
            decorators = _decorators(params[name])
            expect(v, f"{path}: param {name}", "@minValue", decorators.get("min_value"), low)
            expect(v, f"{path}: param {name}", "@maxValue", decorators.get("max_value"), high)
            expect(v, f"{path}: param {name}", "default", params[name].get("default"), default)
        schedule = params.get("healthSweepSchedule") or {}
        expect(v, f"{path}: param healthSweepSchedule", "default", schedule.get("default"), HEALTH_SWEEP_DEFAULT)
        url = params.get("notifyWebhookUrl")
        if url is None or "secure" not in _decorators(url):
            v.append(f"{path}: param notifyWebhookUrl must be @secure() (a workflow URL carries its own credential)")
        elif url.get("default") != "":
            v.append(f"{path}: param notifyWebhookUrl must default to '' (no webhook)")
    for name, output in ((files.get("main.bicep") or {}).get("outputs") or {}).items():
        if "notifyWebhookUrl" in render(output.get("value")):
            v.append(f"main.bicep: output {name} exposes the webhook URL")
    given = {
        "healthSweepSchedule": "0 30 */2 * * *",
        "healthCheckIntervalHours": 6,
        "expiryWarningDays": 14,
        "notifyWebhookUrl": WEBHOOK_SAMPLE,
    }
    for params in ({}, given):
        deployment = Deployment(files, params)
        settings = [
            i for i in deployment.instances("Microsoft.Web/sites/config") if i.body.get("name") == "appsettings"
        ]
        if len(settings) != 1:
            return [*v, f"{params}: expected one deployed appsettings config, found {len(settings)}"]
        props = settings[0].body.get("properties") or {}
        where = f"{settings[0].path}:{settings[0].symbol} with {params or 'the defaults'}"
        settings_vault = _vault_symbols(files.get(settings[0].path) or {}).get(SETTINGS_VAULT_PARAM)
        webhook = bool(params.get("notifyWebhookUrl"))

        def reference(secret: str, vault: str | None = settings_vault) -> str:
            return f"@Microsoft.KeyVault(SecretUri=${{{vault}.properties.vaultUri}}secrets/{secret}/)"

        wanted = {
            "HEALTH_SWEEP_SCHEDULE": params.get("healthSweepSchedule", HEALTH_SWEEP_DEFAULT),
            "HEALTH_CHECK_INTERVAL_HOURS": str(params.get("healthCheckIntervalHours", 24)),
            "EXPIRY_WARNING_DAYS": str(params.get("expiryWarningDays", 30)),
            # The URL is a bearer credential: a reference to the secret the deployment writes, never the URL itself.
            NOTIFY_URL_SETTING: reference(NOTIFY_URL_SECRET_NAME) if webhook else "",
            NOTIFY_SECRET_SETTING: reference(NOTIFY_SECRET_NAME) if webhook else "",
        }
        for name, value in wanted.items():
            actual = props.get(name)
            expect(v, where, name, ref_text(actual) if isinstance(actual, Ref) else actual, value)
        secrets = [i for i in deployment.instances(VAULT_SECRET, existing=False) if i.path == settings[0].path]
        if not webhook:
            if secrets:
                v.append(f"{where}: no vault secret expected without a webhook, found {[i.symbol for i in secrets]}")
            continue
        url_secrets = [i for i in secrets if i.body.get("name") == NOTIFY_URL_SECRET_NAME]
        if len(url_secrets) != 1:
            v.append(f"{where}: the settings vault secret {NOTIFY_URL_SECRET_NAME} must be written once, not "
                     f"{[i.symbol for i in url_secrets]}")
            continue
        secret = url_secrets[0]
        expect(v, f"{where}: {secret.symbol}", "parent", ref_text(secret.body.get("parent")), settings_vault)
        expect(v, f"{where}: {secret.symbol}", "properties.value", get(secret.body, "properties", "value"),
               params["notifyWebhookUrl"])
        depends = [ref_text(d) for d in settings[0].body.get("dependsOn") or []]
        if secret.symbol not in depends:
            v.append(f"{where}: the appsettings must dependsOn {secret.symbol} (the reference resolves from the start)")
    return v


def site_url_rules(files: Files) -> list[str]:
    """The console's redirect URI on the API registration is SITE_URL/auth/callback, and the app's SITE_URL is that
    same base URL: siteUrl when given (no trailing slash), else the Function App's default host name in the cloud
    deployed to (azurewebsites.net, azurewebsites.us, chinacloudsites.cn), never the public cloud's everywhere."""
    v: list[str] = []
    main = files.get("main.bicep") or {}
    for environment, suffix in APP_SERVICE_HOST_SUFFIXES.items():
        for site_url in ("", "https://connections.example.com/"):
            deployment = Deployment(files, {"siteUrl": site_url}, environment)
            where = f"main.bicep with siteUrl={site_url!r} in {environment}"
            redirect = ref_text(deployment.main.evaluate(get(main, "outputs", "CONSOLE_REDIRECT_URI", "value")))
            registration = deployment.module(API_REGISTRATION_MODULE)
            api = deployment.module("app/api.bicep")
            if registration is None or api is None:
                return [*v, f"{where}: {API_REGISTRATION_MODULE} and app/api.bicep must be deployed"]
            registered = [ref_text(u) for u in registration[1].lookup("consoleRedirectUris")[1] or []]
            expect(v, where, f"{API_REGISTRATION_MODULE} consoleRedirectUris", registered, [redirect])
            base = ref_text(api[1].lookup("siteUrl")[1])
            if site_url:
                expect(v, where, "the app's siteUrl", base, site_url.rstrip("/"))
            else:
                name = ref_text(deployment.main.lookup("functionAppName")[1])
                expect(v, where, "the app's siteUrl (its default host name)", base, f"https://{name}.{suffix}")
            expect(v, where, "CONSOLE_REDIRECT_URI", redirect, f"{base}{CONSOLE_CALLBACK_PATH}")
            # SITE_URL is the siteUrl the app is given (trimmed), so it and the registered redirect URI agree.
            tree = files["app/api.bicep"]
            scope = Scope(tree, {**api[1].values, "siteUrl": base}, environment=environment)
            configs = _declared(tree, "Microsoft.Web/sites/config")
            for _, config in (c for c in configs if body(c[1]).get("name") == "appsettings"):
                site = scope.evaluate(get(body(config), "properties", "SITE_URL"))
                expect(v, f"app/api.bicep with siteUrl={base!r}", "SITE_URL", ref_text(site), base)
    return v


def log_retention_rules(files: Files) -> list[str]:
    """The workspace keeps the audit logs' tamper-evident copies logRetentionInDays, by default 90 days at least
    (bounded 30 to 730, what Log Analytics allows), in main.bicep and in modules/monitoring.bicep."""
    v: list[str] = []
    low, high = LOG_RETENTION_BOUNDS
    for path, name in (("main.bicep", LOG_RETENTION_PARAM), ("modules/monitoring.bicep", "retentionInDays")):
        param = ((files.get(path) or {}).get("parameters") or {}).get(name)
        if param is None:
            v.append(f"{path}: param {name} missing")
            continue
        decorators = _decorators(param)
        expect(v, f"{path}: param {name}", "@minValue", decorators.get("min_value"), low)
        expect(v, f"{path}: param {name}", "@maxValue", decorators.get("max_value"), high)
        default = param.get("default")
        if not isinstance(default, int) or default < LOG_RETENTION_DEFAULT:
            v.append(f"{path}: param {name} must default to {LOG_RETENTION_DEFAULT} days or more, not {default!r}")
    for given in (None, 365):
        deployment = Deployment(files, {} if given is None else {LOG_RETENTION_PARAM: given})
        workspaces = deployment.instances("Microsoft.OperationalInsights/workspaces")
        if len(workspaces) != 1:
            return [*v, f"expected one Log Analytics workspace, found {len(workspaces)}"]
        retention = get(workspaces[0].body, "properties", "retentionInDays")
        default = get(files.get("main.bicep") or {}, "parameters", LOG_RETENTION_PARAM, "default")
        wanted = default if given is None else given
        expect(v, f"{workspaces[0].path}:{workspaces[0].symbol} with {LOG_RETENTION_PARAM}={given}",
               "retentionInDays", retention, wanted)
    return v


def _query_violations(where: str, query: str, dimensions: list[str]) -> tuple[list[str], set[str]]:
    """A notification query: AppTraces, notification records only, the events it alerts on, the dimensions as
    columns read from the Properties of the same name. Returns the violations and the events."""
    v: list[str] = []
    if not query.startswith("AppTraces "):
        v.append(f"{where}: the query must read AppTraces (workspace-based Application Insights), not {query[:40]!r}")
    if not re.search(r'\|\s*where\s+tostring\(Properties\.notification\)\s*==\s*"true"\s*\|', query):
        v.append(
            f'{where}: the query must keep notification records only (tostring(Properties.notification) == "true")'
        )
    if not re.search(r"\|\s*extend\s+event\s*=\s*tostring\(Properties\.event\)\s*\|", query):
        v.append(f"{where}: the query must read the event from Properties.event")
    clauses = re.findall(r"\|\s*where\s+event\s+in\s*\(([^)]*)\)", query)
    events = set(re.findall(r'"([^"]*)"', clauses[0])) if len(clauses) == 1 else set()
    if len(clauses) != 1:
        v.append(f"{where}: the query must name its events in one `| where event in (...)`, has {len(clauses)}")
    unknown = sorted(set(re.findall(r"Properties\.(\w+)", query)) - set(NOTIFICATION_DIMENSIONS))
    if unknown:
        v.append(f"{where}: the query reads Properties {unknown}, which notifications do not carry")
    projections = re.findall(r"\|\s*project\s+([^|]*)$", query)
    columns: dict[str, str] = {}
    for column in projections[0].split(",") if projections else []:
        left, _, right = column.partition("=")
        columns[left.strip()] = right.strip()
    expect(v, where, "the projected columns", sorted(columns), sorted(["TimeGenerated", *QUERY_COLUMNS]))
    for column, source in columns.items():
        wanted = f"tostring(Properties.{QUERY_COLUMNS[column]})" if column in QUERY_COLUMNS else ""
        if column == "event":
            wanted = ""  # extended above from Properties.event
        if source != wanted:
            v.append(f"{where}: column {column} must be {wanted or 'projected as is'}, not {source}")
    for name in dimensions:
        if name not in columns:
            v.append(f"{where}: dimension {name} is not a column of the query ({sorted(columns)})")
    return v, events


def _action_group_violations(group: Instance, receivers: list[str]) -> list[str]:
    v: list[str] = []
    where = f"{group.path}:{group.symbol}"
    props = group.body.get("properties") or {}
    expect(v, where, "location", group.body.get("location"), "global")
    expect(v, where, "enabled", props.get("enabled"), True)
    short = props.get("groupShortName")
    if not isinstance(short, str) or not 1 <= len(short) <= 12:
        v.append(f"{where}: groupShortName must be 1 to 12 characters, not {ref_text(short)!r}")
    emails = props.get("emailReceivers") or []
    expect(v, where, "email addresses (one receiver each)", [e.get("emailAddress") for e in emails], receivers)
    names = [ref_text(e.get("name")) for e in emails]
    if len(set(names)) != len(names) or not all(names):
        v.append(f"{where}: email receiver names must be unique, are {names}")
    for email in emails:
        expect(
            v,
            f"{where}: receiver {email.get('emailAddress')}",
            "useCommonAlertSchema",
            email.get("useCommonAlertSchema"),
            True,
        )
    others = sorted(k for k in props if k.endswith("Receivers") and k != "emailReceivers" and props[k])
    if others:
        v.append(f"{where}: only email receivers expected, also has {others}")
    return v


def _alert_rule_violations(
    rule: Instance, workspace: Ref, actions: list[Any], location: str
) -> tuple[list[str], set[str]]:
    v: list[str] = []
    where = f"{rule.path}:{rule.symbol}"
    body_ = rule.body
    props = body_.get("properties") or {}
    expect(v, where, "kind", body_.get("kind"), "LogAlert")
    expect(v, where, "location", body_.get("location"), location)
    expect(v, where, "enabled", props.get("enabled"), True)
    expect(v, where, "scopes", props.get("scopes"), [workspace])
    expect(v, where, "evaluationFrequency", props.get("evaluationFrequency"), ALERT_WINDOW)
    expect(v, where, "windowSize", props.get("windowSize"), ALERT_WINDOW)
    # Stateless: a notification is an event; a stateful rule would "resolve" while the credential is still expired.
    expect(v, where, "autoMitigate", props.get("autoMitigate"), False)
    expect(v, where, "actions.actionGroups", get(props, "actions", "actionGroups"), actions)
    if props.get("severity") not in ALERTED_EVENTS:
        v.append(f"{where}: severity must be one of {sorted(ALERTED_EVENTS)}, not {props.get('severity')!r}")
    criteria = get(props, "criteria", "allOf") or []
    if len(criteria) != 1:
        return [*v, f"{where}: one criterion expected, has {len(criteria)}"], set()
    criterion = criteria[0]
    expect(v, where, "timeAggregation", criterion.get("timeAggregation"), "Count")
    expect(v, where, "operator", criterion.get("operator"), "GreaterThan")
    expect(v, where, "threshold", criterion.get("threshold"), 0)
    periods = criterion.get("failingPeriods")
    if periods is not None:
        expect(v, where, "failingPeriods", periods, {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1})
    dimensions = criterion.get("dimensions") or []
    names = [d.get("name") for d in dimensions]
    for dimension in dimensions:
        expect(
            v,
            f"{where}: dimension {dimension.get('name')}",
            "operator/values",
            (dimension.get("operator"), dimension.get("values")),
            ("Include", ["*"]),
        )
    missing = [d for d in ALERT_DIMENSIONS if d not in names]
    if missing:
        v.append(f"{where}: must split by {missing} so that each connection alerts on its own (has {names})")
    if len(names) > 6 or len(set(names)) != len(names):
        v.append(f"{where}: at most six distinct dimensions, has {names}")
    found, events = _query_violations(where, ref_text(criterion.get("query")), [str(n) for n in names])
    return v + found, events


def alert_rules(files: Files) -> list[str]:
    """Log search alerts on the notification records, one rule per severity with exactly its events, split by
    connection, stateless, every 15 minutes; an action group with one email receiver per address, only when there
    are addresses, and the rules' action then."""
    v: list[str] = []
    symbol = _module_symbol(files, ALERTS_MODULE)
    main = files.get("main.bicep") or {}
    if symbol is None:
        return [f"main.bicep must deploy {ALERTS_MODULE} once"]
    if get(main, "modules", symbol, "config", "condition") is not None:
        v.append(f"main.bicep:{symbol}: the alert rules are always deployed (the action group is what is optional)")
    for rule_symbol, resource in _declared(files.get(ALERTS_MODULE) or {}, SCHEDULED_QUERY_RULE):
        if resource.get("api_version") not in SCHEDULED_QUERY_RULE_API_VERSIONS:
            v.append(
                f"{ALERTS_MODULE}:{rule_symbol}: api version {resource.get('api_version')} is not one of "
                f"{list(SCHEDULED_QUERY_RULE_API_VERSIONS)}"
            )
    workspace = Ref(f"{_module_symbol(files, 'modules/monitoring.bicep')}.outputs.logAnalyticsId")
    location = "westeurope"
    for receivers in ([], ["ops@example.com", "oncall@example.org"]):
        mode = f"alertEmailReceivers={receivers}"
        deployment = Deployment(files, {"alertEmailReceivers": receivers, "location": location})
        groups = deployment.instances(ACTION_GROUP)
        if not receivers:
            actions: list[Any] = []
            if groups:
                v.append(f"with {mode}: no action group expected, found {[g.symbol for g in groups]}")
        elif len(groups) != 1:
            v.append(f"with {mode}: one action group expected, found {[g.symbol for g in groups]}")
            actions = []
        else:
            v += [f"{x} with {mode}" for x in _action_group_violations(groups[0], receivers)]
            actions = [Ref(f"{groups[0].symbol}.id")]
        by_severity: dict[Any, set[str]] = {}
        for rule in notification_rules(deployment):
            found, events = _alert_rule_violations(rule, workspace, actions, location)
            v += [f"{x} with {mode}" for x in found]
            severity = get(rule.body, "properties", "severity")
            twice = by_severity.get(severity, set()) & events
            if twice:
                v.append(f"{rule.path}:{rule.symbol}: alerts again on {sorted(twice)} (severity {severity})")
            by_severity.setdefault(severity, set()).update(events)
        for severity, wanted in ALERTED_EVENTS.items():
            got = by_severity.get(severity, set())
            if got != wanted:
                v.append(
                    f"with {mode}: the severity {severity} rules must alert on {sorted(wanted)}: "
                    f"missing {sorted(wanted - got)}, unexpected {sorted(got - wanted)}"
                )
        covered = set().union(*by_severity.values()) if by_severity else set()
        unknown = covered - set(NOTIFICATION_EVENTS)
        if unknown:
            v.append(f"with {mode}: alerts on events the service does not log: {sorted(unknown)}")
        unalerted = set(NOTIFICATION_EVENTS) - covered - UNALERTED_EVENTS
        if unalerted:
            v.append(f"with {mode}: no rule alerts on {sorted(unalerted)}")
    return v


def diagnostic_settings_rules(files: Files) -> list[str]:
    """Key Vault's audit log and the table service's read/write/delete log go to the Log Analytics workspace."""
    v: list[str] = []
    deployment = Deployment(files, {})
    monitoring = _module_symbol(files, "modules/monitoring.bicep")
    workspace = Ref(f"{monitoring}.outputs.logAnalyticsId")
    monitoring_tree = files.get("modules/monitoring.bicep") or {}
    workspaces = _declared(monitoring_tree, "Microsoft.OperationalInsights/workspaces")
    output = render(get(monitoring_tree, "outputs", "logAnalyticsId", "value"))
    if len(workspaces) != 1 or output != f"{workspaces[0][0]}.id":
        v.append(f"modules/monitoring.bicep: output logAnalyticsId must be the workspace's id, not {output}")
    vault_logs: set[str] = set()
    table_logs = False
    for setting in deployment.instances(DIAGNOSTIC_SETTINGS):
        where = f"{setting.path}:{setting.symbol}"
        target = ref_text(setting.body.get("scope"))
        resource = (setting.scope.tree.get("resources") or {}).get(target) or {}
        props = setting.body.get("properties") or {}
        expect(v, where, "workspaceId", props.get("workspaceId"), workspace)
        logs = [log for log in props.get("logs") or [] if isinstance(log, dict) and log.get("enabled") is True]
        groups = {log.get("categoryGroup") for log in logs} | {log.get("category") for log in logs}
        if resource.get("type") == VAULT:
            vault_logs.add(setting.module)
            if not groups & {"audit", "allLogs", "AuditEvent"}:
                v.append(
                    f"{where}: the vault's AuditEvent log (group audit) must be on, has {sorted(map(str, groups))}"
                )
        elif resource.get("type") == TABLE_SERVICES:
            table_logs = True
            parent = render(body(resource).get("parent"))
            parent_type = ((setting.scope.tree.get("resources") or {}).get(parent) or {}).get("type")
            expect(v, where, "the table service's parent type", parent_type, STORAGE)
            if "allLogs" not in groups and not set(TABLE_LOG_CATEGORIES) <= groups:
                v.append(f"{where}: table logs {list(TABLE_LOG_CATEGORIES)} must be on, has {sorted(map(str, groups))}")
    vaults = {i.module for i in deployment.instances(VAULT, existing=False)}
    if not vaults or vaults - vault_logs:
        v.append(f"no {DIAGNOSTIC_SETTINGS} on the Key Vault of {sorted(vaults - vault_logs) or 'any module'} "
                 "(AuditEvent to Log Analytics)")
    if not table_logs:
        v.append(f"no {DIAGNOSTIC_SETTINGS} on the storage account's tableServices (table logs to Log Analytics)")
    return v


def _network_violations(deployment: Deployment) -> list[str]:
    """With private networking: the Flex subnet delegation, the DNS zones linked to the VNet."""
    v: list[str] = []
    network = deployment.module("modules/network.bicep")
    if network is None:
        return ["modules/network.bicep must be deployed with enablePrivateNetworking=true"]
    vnets = deployment.instances("Microsoft.Network/virtualNetworks")
    if len(vnets) != 1:
        return [f"expected one virtual network, found {len(vnets)}"]
    subnets = get(vnets[0].body, "properties", "subnets") or []
    delegated = [
        s_.get("name")
        for s_ in subnets
        if any(
            get(d, "properties", "serviceName") == FLEX_SUBNET_DELEGATION
            for d in get(s_, "properties", "delegations") or []
        )
    ]
    if len(delegated) != 1:
        v.append(
            f"{vnets[0].path}: one subnet delegated to {FLEX_SUBNET_DELEGATION} (Flex Consumption), not {delegated}"
        )
    else:
        output = network[1].evaluate(get(network[1].tree, "outputs", "appSubnetResourceId", "value"))
        if f", {delegated[0]})" not in ref_text(output):
            v.append(
                f"{vnets[0].path}: output appSubnetResourceId must be subnet {delegated[0]}, is {ref_text(output)}"
            )
    zones = {i.symbol: ref_text(i.body.get("name")) for i in deployment.instances("Microsoft.Network/privateDnsZones")}
    for service, prefix in PRIVATE_ENDPOINT_ZONES.items():
        if not any(name.startswith(prefix) for name in zones.values()):
            v.append(f"{network[0]}: private DNS zone {prefix}* missing (for {service})")
    links = deployment.instances("Microsoft.Network/privateDnsZones/virtualNetworkLinks")
    linked = {
        ref_text(i.body.get("parent"))
        for i in links
        if get(i.body, "properties", "registrationEnabled") is False
        and ref_text(get(i.body, "properties", "virtualNetwork", "id")).endswith(".id")
    }
    if set(zones) - linked:
        v.append(
            f"{network[0]}: DNS zones not linked to the VNet (registrationEnabled false): {sorted(set(zones) - linked)}"
        )
    return v


def private_networking_rules(files: Files) -> list[str]:
    """enablePrivateNetworking: the site integrates with the VNet, the vault and storage go private; off: all public."""
    v: list[str] = []
    for private in (True, False):
        deployment = Deployment(files, {"enablePrivateNetworking": private})
        mode = f"enablePrivateNetworking={str(private).lower()}"
        access, default_action = ("Disabled", "Deny") if private else ("Enabled", "Allow")
        for type_ in (VAULT, STORAGE):
            for instance in deployment.instances(type_, existing=False):
                where = f"{instance.path}:{instance.symbol} with {mode}"
                props = instance.body.get("properties") or {}
                expect(v, where, "publicNetworkAccess", props.get("publicNetworkAccess"), access)
                expect(
                    v, where, "networkAcls.defaultAction", get(props, "networkAcls", "defaultAction"), default_action
                )
        sites = deployment.instances("Microsoft.Web/sites")
        for site in sites:
            props = site.body.get("properties") or {}
            subnet = props.get("virtualNetworkSubnetId")
            where = f"{site.path}:{site.symbol} with {mode}"
            if private and not ref_text(subnet).endswith(".outputs.appSubnetResourceId"):
                v.append(
                    f"{where}: virtualNetworkSubnetId must be the network module's app subnet, not {ref_text(subnet)}"
                )
            if not private and subnet is not None:
                v.append(
                    f"{where}: virtualNetworkSubnetId must be null without private networking, not {ref_text(subnet)}"
                )
            expect(v, where, "vnetRouteAllEnabled", props.get("vnetRouteAllEnabled"), private)
        endpoints = deployment.instances(PRIVATE_ENDPOINT)
        if not private:
            if endpoints or deployment.module("modules/network.bicep"):
                v.append(
                    f"with {mode}: no network, no private endpoint expected, found {[i.symbol for i in endpoints]}"
                )
            continue
        v += _network_violations(deployment)
        groups = deployment.instances(PRIVATE_DNS_ZONE_GROUP)
        # Each vault (the credential one and the settings one) and the storage account: its own endpoints.
        services = {VAULT: ("vault",), STORAGE: ("blob", "table")}
        wanted = {
            (instance.module, type_, group_id)
            for type_, group_ids in services.items()
            for instance in deployment.instances(type_, existing=False)
            for group_id in group_ids
        }
        found = set()
        for endpoint in endpoints:
            where = f"{endpoint.path}:{endpoint.symbol} with {mode}"
            connections = get(endpoint.body, "properties", "privateLinkServiceConnections") or []
            for connection in connections:
                target = ref_text(get(connection, "properties", "privateLinkServiceId"))
                target_type = ((endpoint.scope.tree.get("resources") or {}).get(target.removesuffix(".id")) or {}).get(
                    "type"
                )
                for group_id in get(connection, "properties", "groupIds") or []:
                    found.add((endpoint.module, target_type, group_id))
                    zone_groups = [
                        g
                        for g in groups
                        if g.module == endpoint.module
                        and g.path == endpoint.path
                        and ref_text(g.body.get("parent")) == endpoint.symbol
                    ]
                    zone_ids = [
                        ref_text(get(c, "properties", "privateDnsZoneId"))
                        for g in zone_groups
                        for c in get(g.body, "properties", "privateDnsZoneConfigs") or []
                    ]
                    if zone_ids != [
                        f"{_module_symbol(files, 'modules/network.bicep')}.outputs.privateDnsZoneResourceIds.{group_id}"
                    ]:
                        v.append(
                            f"{where}: the {group_id} endpoint needs the network's {group_id} DNS zone, has {zone_ids}"
                        )
            subnet = ref_text(get(endpoint.body, "properties", "subnet", "id"))
            if not subnet.endswith(".outputs.privateEndpointSubnetResourceId"):
                v.append(f"{where}: must sit in the network module's private endpoint subnet, not {subnet}")
        for module, target_type, group_id in sorted(wanted - found):
            v.append(f"with {mode}: no private endpoint for {target_type} of main.bicep:{module} ({group_id})")
    return v


TELEMETRY_SETTINGS = {
    # The Python worker configures Azure Monitor and makes the host's span current: the service's spans join it.
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
    # Every trace kept (docs/telemetry.md): failed requests and rotations are never sampled away.
    "OTEL_TRACES_SAMPLER": "always_on",
}


def telemetry_settings_rules(files: Files) -> list[str]:
    """The worker exports OpenTelemetry (joining the host's trace), keeps every trace, with Entra ID auth."""
    v: list[str] = []
    deployment = Deployment(files, {})
    settings = [i for i in deployment.instances("Microsoft.Web/sites/config") if i.body.get("name") == "appsettings"]
    if len(settings) != 1:
        return [f"expected one deployed appsettings config, found {len(settings)}"]
    props = settings[0].body.get("properties") or {}
    where = f"{settings[0].path}:{settings[0].symbol}"
    for name, wanted in TELEMETRY_SETTINGS.items():
        expect(v, where, name, props.get(name), wanted)
    if "Authorization=AAD" not in ref_text(props.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")):
        v.append(f"{where}: APPLICATIONINSIGHTS_AUTHENTICATION_STRING must ask for Authorization=AAD")
    return v


# The rules on the service itself (app/alerts.bicep's serviceAlertRules): its failures, and its health sweep gone
# silent, told by the record shared/health.py logs at the end of each sweep.
SERVICE_RULES = ("service-failures", "health-sweep-silent")
HEALTH_SWEEP_DONE = "Health sweep done"
SILENCE_WINDOW_PARAM = "healthSweepSilenceWindow"
HEALTH_SCHEDULE_PARAM = "healthSweepSchedule"


def notification_rules(deployment: Deployment) -> list[Instance]:
    """The alert rules on the connections' notification records (not those on the service itself)."""
    return [r for r in deployment.instances(SCHEDULED_QUERY_RULE)
            if r.path == ALERTS_MODULE and r.symbol.startswith("alertRules[")]


def service_rules(deployment: Deployment) -> dict[str, Instance]:
    """The alert rules on the service itself, by the suffix of their names."""
    found: dict[str, Instance] = {}
    for rule in deployment.instances(SCHEDULED_QUERY_RULE):
        if rule.path == ALERTS_MODULE and rule.symbol.startswith("serviceAlertRules["):
            name = ref_text(rule.body.get("name"))
            found[next((s for s in SERVICE_RULES if name.endswith(f"-{s}")), name)] = rule
    return found


def iso_hours(duration: str) -> float:
    """An ISO 8601 duration of days or hours (P2D, PT6H, PT15M) in hours."""
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?)?", duration)
    if match is None or not duration.strip("PT"):
        raise ValueError(f"not a duration of days, hours and minutes: {duration!r}")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return days * 24 + hours + minutes / 60


def service_alert_rules(files: Files, health_source: str, longest_gap_hours: float) -> list[str]:
    """The service's own rules: its failures (AppExceptions, and error records that are not notifications) every 15
    minutes, stateless, muted an hour; its health sweep gone silent (no record starting with what
    ``health_source`` logs at the end of a sweep) over the window given, stateful, at least three times the longest gap
    between two sweeps of the default schedule (``longest_gap_hours``); both to the action group when there is one."""
    v: list[str] = []
    if f'log.info("{HEALTH_SWEEP_DONE} ' not in health_source:
        v.append(f"shared/health.py no longer logs {HEALTH_SWEEP_DONE!r} at the end of a sweep: the silence rule "
                 "reads that record")
    default_window = get(files.get("main.bicep") or {}, "parameters", SILENCE_WINDOW_PARAM, "default")
    for receivers, window in (([], None), (["ops@example.com"], "P1D")):
        params: dict[str, Any] = {"alertEmailReceivers": receivers}
        if window is not None:
            params[SILENCE_WINDOW_PARAM] = window
        deployment = Deployment(files, params)
        mode = f"alertEmailReceivers={receivers}, {SILENCE_WINDOW_PARAM}={window or default_window}"
        found = service_rules(deployment)
        if sorted(found) != sorted(SERVICE_RULES):
            return [*v, f"with {mode}: the service's rules must be {list(SERVICE_RULES)}, are {sorted(found)}"]
        groups = deployment.instances(ACTION_GROUP)
        actions = [Ref(f"{groups[0].symbol}.id")] if groups else []
        for name, rule in found.items():
            where = f"{rule.path}:{rule.symbol} ({name}) with {mode}"
            props = rule.body.get("properties") or {}
            expect(v, where, "kind", rule.body.get("kind"), "LogAlert")
            expect(v, where, "enabled", props.get("enabled"), True)
            expect(v, where, "actions.actionGroups", get(props, "actions", "actionGroups"), actions)
            criteria = get(props, "criteria", "allOf") or []
            if len(criteria) != 1:
                v.append(f"{where}: one criterion expected, has {len(criteria)}")
                continue
            criterion = criteria[0]
            query = ref_text(criterion.get("query"))
            expect(v, where, "timeAggregation", criterion.get("timeAggregation"), "Count")
            if criterion.get("dimensions"):
                v.append(f"{where}: one alert for the service, not split by {criterion.get('dimensions')}")
            if name == "service-failures":
                expect(v, where, "operator/threshold", (criterion.get("operator"), criterion.get("threshold")),
                       ("GreaterThan", 0))
                expect(v, where, "frequency/window", (props.get("evaluationFrequency"), props.get("windowSize")),
                       (ALERT_WINDOW, ALERT_WINDOW))
                expect(v, where, "autoMitigate", props.get("autoMitigate"), False)
                expect(v, where, "muteActionsDuration", props.get("muteActionsDuration"), "PT1H")
                for part in ("(AppExceptions |", "(AppTraces | where SeverityLevel >= 3 and "
                             'tostring(Properties.notification) != "true" |'):
                    if part not in query:
                        v.append(f"{where}: the query must read {part!r}: {query}")
            else:
                expect(v, where, "operator/threshold", (criterion.get("operator"), criterion.get("threshold")),
                       ("LessThan", 1))
                expect(v, where, "query", query, f'AppTraces | where Message startswith "{HEALTH_SWEEP_DONE}"')
                expect(v, where, "windowSize", props.get("windowSize"), window or default_window)
                expect(v, where, "autoMitigate", props.get("autoMitigate"), True)
                frequency = iso_hours(str(props.get("evaluationFrequency")))
                if frequency > iso_hours(str(props.get("windowSize"))):
                    v.append(f"{where}: evaluated every {frequency} h, longer than its window")
    if iso_hours(str(default_window)) < 3 * longest_gap_hours:
        v.append(f"main.bicep: {SILENCE_WINDOW_PARAM} defaults to {default_window}, less than three times the "
                 f"longest gap ({longest_gap_hours} h) between two health sweeps of {HEALTH_SCHEDULE_PARAM}'s "
                 "default: it would alert on a healthy service, or on one missed sweep")
    return v


def longest_gap_hours(schedule: str) -> float:
    """The longest time between two runs of an NCRONTAB schedule over a year (read as the host's timer reads it)."""
    from datetime import UTC, datetime

    from localdev.ncrontab import next_after

    at = datetime(2027, 1, 1, tzinfo=UTC)
    longest = 0.0
    while at.year == 2027:
        following = next_after(schedule, at)
        longest = max(longest, (following - at).total_seconds() / 3600)
        at = following
    return longest


def service_alerts(files: Files) -> list[str]:
    """:func:`service_alert_rules` for the health sweep's default schedule and the service's own source."""
    from pathlib import Path

    schedule = get(files.get("main.bicep") or {}, "parameters", HEALTH_SCHEDULE_PARAM, "default")
    source = (Path(__file__).resolve().parents[2] / "shared" / "health.py").read_text()
    return service_alert_rules(files, source, longest_gap_hours(str(schedule)))


RULES: tuple[Callable[[Files], list[str]], ...] = (
    service_alerts,
    function_app_rules,
    publishing_credentials_rules,
    storage_rules,
    key_vault_rules,
    monitoring_rules,
    role_assignment_rules,
    rbac_wiring_rules,
    vault_wiring_rules,
    parameter_description_rules,
    output_description_rules,
    app_settings_rules,
    main_template_rules,
    api_registration_rules,
    auth_settings_rules,
    diagnostic_settings_rules,
    private_networking_rules,
    health_settings_rules,
    site_url_rules,
    log_retention_rules,
    alert_rules,
    telemetry_settings_rules,
)


def all_violations(files: Files) -> list[str]:
    return [violation for rule in RULES for violation in rule(files)]
