"""The security and wiring rules of infra/*.bicep, as functions over pycep-parser trees.

Each rule takes ``files`` (path relative to infra/ -> pycep tree) and returns a list of
violations (empty when the rule holds), so the same rule runs on the real templates and on
tampered copies (tests/infra/test_bicep.py proves each rule can fail).

pycep trees: a resource is {"type", "existing", "config"}, where "config" is the resource body,
or {"condition", "config"} for `= if (...) {...}`; strings lose their quotes and identifiers are
bare strings; expressions are {"operator": ...} / {"function": ...} nodes (see ``render``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

Tree = dict[str, Any]
Files = dict[str, Tree]

# ---------------------------------------------------------------------------------------------
# What the deployment must have
# ---------------------------------------------------------------------------------------------

ROLE_GUIDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
STORAGE = "Microsoft.Storage/storageAccounts"
VAULT = "Microsoft.KeyVault/vaults"
APP_INSIGHTS = "Microsoft.Insights/components"
UAMI = "Microsoft.ManagedIdentity/userAssignedIdentities"
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"

# The identity's roles, each on its resource type, and no others.
IDENTITY_ROLES = {
    ("Storage Blob Data Owner", STORAGE),
    ("Storage Queue Data Contributor", STORAGE),
    ("Storage Table Data Contributor", STORAGE),
    ("Key Vault Secrets Officer", VAULT),
    ("Monitoring Metrics Publisher", APP_INSIGHTS),
}
# The deploying user's optional role.
USER_ROLES = {("Key Vault Secrets Officer", VAULT)}
IDENTITY_PRINCIPAL_PARAM = "identityPrincipalId"
USER_PRINCIPAL_PARAM = "userPrincipalId"

OAUTH_SETTINGS = (
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET",
    "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_SECRET",
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID",
    "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",
)
REQUIRED_SETTINGS = (
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "STATE_STORAGE",
    "KEY_VAULT_URL",
    "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE",
    "AZURE_CLIENT_ID",
    "AZURE_AUTHORITY_HOST",
    "GRAPH_ENDPOINT",
    "SITE_URL",
    "ROTATION_SWEEP_SCHEDULE",
    "ROTATION_MAX_CONCURRENCY",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    *OAUTH_SETTINGS,
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


def oauth_secret_name(setting: str) -> str:
    """The vault secret behind an OAuth instance setting: INF_A_B -> inf-a-b."""
    return setting.lower().replace("_", "-")


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


def role_assignment_rules(files: Files) -> list[str]:
    """The identity has exactly the five roles on their resources; names are guid(scope.id, principal, role)."""
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
        symbols = {s: r["type"] for s, r in (tree.get("resources") or {}).items()}
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
            scope_type = symbols.get(scope) if isinstance(scope, str) else None
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
    if not set(user_roles) <= USER_ROLES or len(user_roles) != len(set(user_roles)):
        v.append(f"user role assignments must be only {sorted(USER_ROLES)}, not {user_roles}")
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
    for name, value in settings.items():
        text = render(value)
        if name in OAUTH_SETTINGS or (SECRETISH.search(name) and name not in NOT_SECRETS):
            match = KEY_VAULT_REFERENCE.match(value) if isinstance(value, str) else None
            if match is None:
                v.append(f"{where}: {name} must be a @Microsoft.KeyVault(SecretUri=...) reference, not {text!r}")
            elif name in OAUTH_SETTINGS and match.group(1) != oauth_secret_name(name):
                v.append(f"{where}: {name} must reference secret {oauth_secret_name(name)}, not {match.group(1)}")
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
    key_vault_url = render(settings.get("KEY_VAULT_URL"))
    for name in OAUTH_SETTINGS:
        value = settings.get(name)
        if isinstance(value, str) and not value.startswith(
            f"@Microsoft.KeyVault(SecretUri=${{{key_vault_url}}}secrets/"
        ):
            v.append(f"{where}: {name} must reference the app's own vault ({key_vault_url})")
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
        params = get(module, "config", "params") or {}
        if symbol != "rbac" and params.get("tags") != "tags":
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


RULES: tuple[Callable[[Files], list[str]], ...] = (
    function_app_rules,
    publishing_credentials_rules,
    storage_rules,
    key_vault_rules,
    monitoring_rules,
    role_assignment_rules,
    rbac_wiring_rules,
    parameter_description_rules,
    app_settings_rules,
    main_template_rules,
)


def all_violations(files: Files) -> list[str]:
    return [violation for rule in RULES for violation in rule(files)]
