"""infra/*.bicep, parsed with pycep-parser, holds the deployment's security properties.

The rules live in bicep_rules.py; test_tampered_template_is_caught feeds them tampered copies
of the real templates to prove each one can fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.infra import bicep_rules as rules
from tests.infra.tooling import INFRA_DIR, ROOT

Parse = Callable[[dict[str, str]], dict[str, Any]]


def test_every_template_parses(templates: dict[str, Any]) -> None:
    assert {
        "main.bicep",
        "app/api.bicep",
        "app/rbac.bicep",
        "app/api-registration.bicep",
        "app/alerts.bicep",
        "modules/network.bicep",
    } <= set(templates)
    for path, tree in templates.items():
        assert tree.get("resources") or tree.get("modules"), f"{path} declares nothing"


def test_function_app_is_flex_consumption_https_only_tls12_no_ftp(templates: dict[str, Any]) -> None:
    assert rules.function_app_rules(templates) == []


def test_basic_auth_publishing_is_disabled(templates: dict[str, Any]) -> None:
    assert rules.publishing_credentials_rules(templates) == []


def test_storage_account_takes_entra_id_only(templates: dict[str, Any]) -> None:
    assert rules.storage_rules(templates) == []


def test_key_vault_uses_rbac_soft_delete_and_purge_protection(templates: dict[str, Any]) -> None:
    assert rules.key_vault_rules(templates) == []


def test_monitoring_has_local_auth_disabled(templates: dict[str, Any]) -> None:
    assert rules.monitoring_rules(templates) == []


def test_identity_has_exactly_its_six_roles_and_the_deployer_none_on_the_credential_vault(
    templates: dict[str, Any],
) -> None:
    assert rules.role_assignment_rules(templates) == []


def test_role_assignments_go_to_the_user_assigned_identity(templates: dict[str, Any]) -> None:
    assert rules.rbac_wiring_rules(templates) == []


def test_the_operator_set_secrets_live_in_a_settings_vault_apart_from_the_credentials(
    templates: dict[str, Any],
) -> None:
    assert rules.vault_wiring_rules(templates) == []


def test_every_parameter_is_described_required_or_optional(templates: dict[str, Any]) -> None:
    assert rules.parameter_description_rules(templates) == []


def test_every_output_is_described(templates: dict[str, Any]) -> None:
    assert rules.output_description_rules(templates) == []


def test_site_url_and_the_console_redirect_uri_agree_in_every_cloud(templates: dict[str, Any]) -> None:
    assert rules.site_url_rules(templates) == []


def test_log_analytics_keeps_the_audit_logs_90_days_by_default(templates: dict[str, Any]) -> None:
    assert rules.log_retention_rules(templates) == []


def test_app_settings_are_complete_and_secrets_are_key_vault_references(templates: dict[str, Any]) -> None:
    assert rules.app_settings_rules(templates) == []


def test_main_template_tags_names_and_outputs(templates: dict[str, Any]) -> None:
    assert rules.main_template_rules(templates) == []


def test_api_registration_has_the_five_roles_and_their_per_app_variants(templates: dict[str, Any]) -> None:
    assert rules.api_registration_rules(templates) == []


def test_app_settings_carry_the_cloud_and_the_federation_identity(templates: dict[str, Any]) -> None:
    assert rules.cloud_settings_rules(templates) == []


def test_app_settings_carry_the_tenant_the_audience_and_the_audit_retention(templates: dict[str, Any]) -> None:
    assert rules.auth_settings_rules(templates) == []


def test_the_worker_exports_opentelemetry_and_keeps_every_trace(templates: dict[str, Any]) -> None:
    assert rules.telemetry_settings_rules(templates) == []
    host = json.loads((ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"


def test_vault_audit_events_and_table_logs_go_to_log_analytics(templates: dict[str, Any]) -> None:
    assert rules.diagnostic_settings_rules(templates) == []


def test_private_networking_closes_the_vault_and_storage_and_integrates_the_app(templates: dict[str, Any]) -> None:
    assert rules.private_networking_rules(templates) == []


def test_the_evaluator_reads_the_roles_and_the_private_endpoints(templates: dict[str, Any]) -> None:
    """The rules above see real values, not Refs: 20 roles, 4 private endpoints, none without private networking."""
    private = rules.Deployment(templates, {"enablePrivateNetworking": True})
    registration = private.module(rules.API_REGISTRATION_MODULE)
    assert registration is not None
    roles = registration[1].lookup("appRoles")[1]
    assert [r["value"] for r in roles] == [*rules.API_ROLES, *rules.APP_SCOPED_ROLES]
    endpoints = private.instances(rules.PRIVATE_ENDPOINT)
    group_ids = sorted(
        g
        for e in endpoints
        for c in e.body["properties"]["privateLinkServiceConnections"]
        for g in c["properties"]["groupIds"]
    )
    assert group_ids == ["blob", "table", "vault", "vault"]  # the credential vault and the settings vault
    vaults = {e.module for e in endpoints if e.path == rules.KEY_VAULT_MODULE}
    assert len(vaults) == 2, vaults
    public = rules.Deployment(templates, {})
    assert public.instances(rules.PRIVATE_ENDPOINT) == []
    assert public.module("modules/network.bicep") is None


def test_health_settings_follow_the_parameters_and_the_webhook_secret_is_a_key_vault_reference(
    templates: dict[str, Any],
) -> None:
    assert rules.health_settings_rules(templates) == []


def test_alert_rules_cover_the_notification_events_and_the_action_group_emails_each_address(
    templates: dict[str, Any],
) -> None:
    assert rules.alert_rules(templates) == []


def test_the_evaluator_reads_the_alert_rules_and_the_action_group(templates: dict[str, Any]) -> None:
    """The alert rules above see real values: four rules, their queries, one receiver per address."""
    receivers = ["ops@example.com", "oncall@example.org", "security@example.net"]
    emailed = rules.Deployment(templates, {"alertEmailReceivers": receivers})
    (group,) = emailed.instances(rules.ACTION_GROUP)
    assert [r["emailAddress"] for r in group.body["properties"]["emailReceivers"]] == receivers
    alert_rules = rules.notification_rules(emailed)
    assert sorted(r.body["properties"]["severity"] for r in alert_rules) == [1, 2, 2, 4]
    for rule in alert_rules:
        query = rules.ref_text(rule.body["properties"]["criteria"]["allOf"][0]["query"])
        assert query.startswith("AppTraces | where"), query
        assert "${" not in query, query
        assert rule.body["properties"]["actions"]["actionGroups"] == [rules.Ref(f"{group.symbol}.id")]
    silent = rules.Deployment(templates, {})
    assert silent.instances(rules.ACTION_GROUP) == []
    assert [r.body["properties"]["actions"]["actionGroups"] for r in silent.instances(rules.SCHEDULED_QUERY_RULE)] == [
        [],
        [],
        [],
        [],
        [],
        [],
    ]
    webhook = rules.Deployment(templates, {"notifyWebhookUrl": rules.WEBHOOK_SAMPLE})
    (settings,) = [i for i in webhook.instances("Microsoft.Web/sites/config") if i.body["name"] == "appsettings"]
    secret = rules.ref_text(settings.body["properties"][rules.NOTIFY_SECRET_SETTING])
    assert secret.endswith(f"secrets/{rules.NOTIFY_SECRET_NAME}/)"), secret
    url = rules.ref_text(settings.body["properties"][rules.NOTIFY_URL_SETTING])
    assert url == "@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/notify-webhook-url/)"
    (written,) = webhook.instances(rules.VAULT_SECRET)
    assert written.body["properties"]["value"] == rules.WEBHOOK_SAMPLE
    assert rules.Deployment(templates, {}).instances(rules.VAULT_SECRET) == []


def test_the_service_alerts_on_its_own_failures_and_on_its_health_sweep_gone_silent(
        templates: dict[str, Any]) -> None:
    """Review I (session 18): the rules watched the connections only; a service that cannot start, or whose timers
    keep failing, alerted nothing, and silence looked like health."""
    assert rules.service_alerts(templates) == []


def test_the_service_rules_check_catches_a_silence_window_a_healthy_service_would_break(
        templates: dict[str, Any]) -> None:
    """The same check fails for a daily sweep under the default window, and for a log line renamed."""
    source = (INFRA_DIR.parent / "shared" / "health.py").read_text()
    daily = rules.service_alert_rules(templates, source, rules.longest_gap_hours("0 0 3 * * *"))
    assert any("less than three times the longest gap (24.0 h)" in v for v in daily), daily
    assert rules.longest_gap_hours("0 0 * * * *") == 1.0
    renamed = rules.service_alert_rules(templates, source.replace("Health sweep done", "Health sweep ended"), 1.0)
    assert any("no longer logs" in v for v in renamed), renamed


def test_the_evaluator_knows_the_cloud_deployed_to(templates: dict[str, Any]) -> None:
    """environment().name is the given cloud: the default host name, hence SITE_URL and the redirect URI, follow it."""
    output = templates["main.bicep"]["outputs"]["CONSOLE_REDIRECT_URI"]["value"]
    for environment, suffix in rules.APP_SERVICE_HOST_SUFFIXES.items():
        redirect = rules.ref_text(rules.Deployment(templates, {}, environment).main.evaluate(output))
        assert redirect.startswith("https://") and redirect.endswith(f".{suffix}/auth/callback"), redirect
    given = rules.Deployment(templates, {"siteUrl": "https://connections.example.com/"}, "AzureChinaCloud")
    assert rules.ref_text(given.main.evaluate(output)) == "https://connections.example.com/auth/callback"


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_alert_queries_read_dimensions_a_log_record_can_carry() -> None:
    """Custom dimensions come from a LogRecord's `extra` attributes: a name the record already has (name, message,
    msg, args, ...) is refused by logging and dropped by OpenTelemetry's LoggingHandler, so it never reaches
    AppTraces.Properties."""
    reserved = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
    assert not set(rules.NOTIFICATION_DIMENSIONS) & reserved, set(rules.NOTIFICATION_DIMENSIONS) & reserved


def test_notification_records_carry_what_the_alert_queries_read() -> None:
    """The contract between shared/notify.py and app/alerts.bicep: the service's events are the ones the rules know,
    and Notifier.emit logs a record whose attributes (Application Insights custom dimensions, AppTraces.Properties)
    are the ones the queries read."""
    notify = pytest.importorskip("shared.notify")
    from shared.records import Notification

    base = {*notify.EVENTS.values(), notify.ROTATION_FAILED, notify.CHECK_UNAVAILABLE, notify.RECOVERED}
    assert base == set(rules.NOTIFICATION_BASE_EVENTS)
    assert set(notify.EVENTS.values()) == set(rules.REMINDED_EVENTS)  # health_notices reminds of these
    # ... and rotation_failed of a rotation failing for a day and more (review H: the rule left it out)
    from datetime import timedelta

    from shared.records import ConnectionRecord, RotationState

    at = datetime(2026, 1, 1, tzinfo=UTC)  # a connection failing its rotation for the tenth time in a row
    record = ConnectionRecord(app="azure-key-vault", id="c", name="n", method="client-secret", tenant_id="t",
                              client_id="c", created_at=at, updated_at=at, secret_name="s", secret_version="v",
                              rotation=RotationState(failures=10))
    reminder = notify.rotation_failed(record, "failed", at, timedelta(days=1), first=False)
    assert reminder is not None and reminder.event in rules.NOTIFICATION_EVENTS
    assert f"{notify.CHECK_UNAVAILABLE}-reminder" in rules.NOTIFICATION_EVENTS  # unchecked_notices reminds daily
    item = Notification(
        "credential-expired",
        "azure-key-vault",
        "c0ffee",
        "prod-vault",
        "expired",
        "The secret expired.",
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    handler = _Capture()
    notify.log.addHandler(handler)
    try:
        notify.Notifier(None).emit(item)
    except KeyError as error:
        pytest.fail(
            f"Notifier.emit raised KeyError {error}: logging refuses `extra` keys a LogRecord already has (name, "
            "message, ...), so no notification is logged and no alert can fire. app/alerts.bicep reads "
            f"{list(rules.NOTIFICATION_DIMENSIONS)}"
        )
    finally:
        notify.log.removeHandler(handler)
    assert len(handler.records) == 1, handler.records
    record = handler.records[0]
    assert record.getMessage() == "notification credential-expired azure-key-vault c0ffee"
    attributes = vars(record)
    wanted = {
        "notification": "true",
        "event": "credential-expired",
        "app": "azure-key-vault",
        "connectionId": "c0ffee",
        "connectionName": "prod-vault",
        "status": "expired",
        "detail": "The secret expired.",
    }
    assert set(wanted) == set(rules.NOTIFICATION_DIMENSIONS)
    assert {key: attributes.get(key) for key in wanted} == wanted


def test_graph_extension_is_pinned_in_bicepconfig() -> None:
    config = json.loads((INFRA_DIR / "bicepconfig.json").read_text())
    alias = config["extensions"][rules.GRAPH_EXTENSION]
    assert re.fullmatch(r"br:mcr\.microsoft\.com/bicep/extensions/microsoftgraph/v1\.0:\d+\.\d+\.\d+", alias), alias


def test_postprovision_hook_registers_the_api_when_the_template_does_not(
    parse: Parse, templates: dict[str, Any]
) -> None:
    """azure.yaml runs infra/hooks/register-api.sh; it acts only on AZURE_DEPLOY_API_REGISTRATION=false, the variable
    main.parameters.json feeds deployApiRegistration from, and reads the outputs main.bicep declares."""
    azure = parse({"azure.yaml": (ROOT / "azure.yaml").read_text()})["azure.yaml"]
    hook = azure["hooks"]["postprovision"]["posix"]
    assert hook["run"] == "./infra/hooks/register-api.sh"
    script = INFRA_DIR / "hooks" / "register-api.sh"
    assert os.access(script, os.X_OK), f"{script} must be executable"
    subprocess.run(["sh", "-n", str(script)], check=True)
    text = script.read_text()
    parameters = json.loads((INFRA_DIR / "main.parameters.json").read_text())["parameters"]
    assert parameters["deployApiRegistration"]["value"] == "${AZURE_DEPLOY_API_REGISTRATION=true}"
    assert parameters["authAudience"]["value"] == "${AUTH_AUDIENCE=}"
    assert '"${AZURE_DEPLOY_API_REGISTRATION:-true}" != "false"' in text
    outputs = templates["main.bicep"]["outputs"]
    for name in re.findall(r"\b(AUTH_[A-Z_]+|AZURE_[A-Z_]+)\b", text):
        # azd's own variables (not outputs): the switch, the environment, the subscription it deployed to.
        if name not in {"AZURE_DEPLOY_API_REGISTRATION", "AZURE_ENV_NAME", "AZURE_SUBSCRIPTION_ID"} and (
            name != "AUTH_AUDIENCE"
        ):
            assert name in outputs, f"register-api.sh reads {name}, which main.bicep does not output"
    for flag in (
        "--sign-in-audience AzureADMyOrg",
        "--requested-access-token-version 2",
        "--identifier-uris",
        "--app-roles",
    ):
        assert flag in text, flag
    assert "appRoleAssignmentRequired=true" in text
    assert "azd env set AUTH_AUDIENCE" in text


# A stand-in Azure CLI and azd for the hook: each call is logged; the answers are just enough to get through.
FAKE_AZ = r"""#!/bin/sh
printf 'az %s\n' "$*" >>"$FAKE_LOG"
case "$*" in
    "account show --query tenantId --output tsv")
        [ -n "$FAKE_CLI_TENANT" ] || { echo "Please run 'az login' to setup account." >&2; exit 1; }
        printf '%s\n' "$FAKE_CLI_TENANT" ;;
    "ad app create "*) echo 11111111-1111-1111-1111-111111111111 ;;
    "ad app show "*"--query id "*) echo 22222222-2222-2222-2222-222222222222 ;;
    "ad app show "*) echo 1 ;;
    "ad app federated-credential list "*) printf '%s' "$FAKE_FIC" ;;
    "cloud show --query endpoints.activeDirectory "*) echo https://login.microsoftonline.com/ ;;
    "ad sp show "*) echo 33333333-3333-3333-3333-333333333333 ;;
esac
"""
FAKE_AZD = r"""#!/bin/sh
printf 'azd %s\n' "$*" >>"$FAKE_LOG"
"""
AZD_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000abcd"


CONSOLE_FIC = (f"https://login.microsoftonline.com/{AZD_TENANT}/v2.0 44444444-4444-4444-4444-444444444444 "
               "api://AzureADTokenExchange")


def run_hook(tmp_path: Any, cli_tenant: str, fic: str = CONSOLE_FIC,
             ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """infra/hooks/register-api.sh as azd runs it (AZURE_DEPLOY_API_REGISTRATION=false, the outputs in the
    environment), with the fake az and azd first on PATH; returns the run and the commands it called. ``fic``: what
    the application's console federated credential names (issuer, subject, audiences), empty when it has none."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("az", FAKE_AZ), ("azd", FAKE_AZD)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_CLI_TENANT": cli_tenant,
        "FAKE_FIC": fic,
        "AZURE_DEPLOY_API_REGISTRATION": "false",
        "AZURE_ENV_NAME": "test",
        "AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "AZURE_TENANT_ID": AZD_TENANT,
        "AZURE_RESOURCE_GROUP": "rg-test",
        "AZURE_FUNCTION_APP_NAME": "func-api-test",
        "AUTH_IDENTIFIER_URI": "api://app-connections-api-test",
        "AUTH_APP_ROLES": "[]",
        "AUTH_USER_IMPERSONATION_SCOPE": "{}",
        "CONSOLE_REDIRECT_URI": "https://func-api-test.azurewebsites.net/auth/callback",
        "AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID": "44444444-4444-4444-4444-444444444444",
        "AZURE_CLOUD": "AzurePublicCloud",
    }
    done = subprocess.run(
        ["sh", str(INFRA_DIR / "hooks" / "register-api.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done, log.read_text().splitlines()


@pytest.mark.parametrize("cli_tenant", ["0b0b0b0b-0000-0000-0000-000000000000", ""], ids=["other-tenant", "signed-out"])
def test_the_hook_stops_before_registering_anything_in_another_tenant(tmp_path: Any, cli_tenant: str) -> None:
    """`az ad` registers in the Azure CLI's tenant: signed in to another one than azd deployed to (or not at all),
    the hook must stop with the command that fixes it, before any registration or app setting."""
    done, calls = run_hook(tmp_path, cli_tenant)
    assert done.returncode != 0, done.stdout
    assert f"az login --tenant {AZD_TENANT}" in done.stderr, done.stderr
    assert calls == ["az account show --query tenantId --output tsv"], calls


def test_the_hook_registers_in_azd_s_tenant_and_names_the_subscription(tmp_path: Any) -> None:
    """Same tenant (GUIDs compared without case): it registers, and the az command on the Function App names azd's
    subscription rather than the Azure CLI's default one."""
    done, calls = run_hook(tmp_path, AZD_TENANT.upper())
    assert done.returncode == 0, done.stderr
    assert any(c.startswith("az ad app create ") for c in calls), calls
    resource_calls = [c for c in calls if c.startswith("az functionapp ")]
    assert resource_calls, calls
    for call in resource_calls:
        assert f"--subscription {SUBSCRIPTION}" in call, call
    assert "azd env set AUTH_AUDIENCE 11111111-1111-1111-1111-111111111111" in calls


@pytest.mark.parametrize(("fic", "expected"), [
    (CONSOLE_FIC, None),
    (CONSOLE_FIC.upper(), None),
    ("", "create"),
    (CONSOLE_FIC.replace("44444444-4444-4444-4444-444444444444", "55555555-5555-5555-5555-555555555555"), "update"),
    (CONSOLE_FIC.replace("api://AzureADTokenExchange", "api://AzureADTokenExchangeUSGov"), "update"),
], ids=["current", "current-other-case", "none", "other-identity", "other-audience"])
def test_the_hook_makes_the_console_s_federated_credential_name_this_deployment_s_identity(
    tmp_path: Any, fic: str, expected: str | None,
) -> None:
    """The registration outlives `azd down`; a new resource group brings a new managed identity (or another cloud
    another audience): a credential naming the old one is rewritten, not kept because its name matches (review R).
    One that names the current identity is left alone."""
    done, calls = run_hook(tmp_path, AZD_TENANT, fic)
    assert done.returncode == 0, done.stderr
    changes = [c.split()[4] for c in calls if c.startswith("az ad app federated-credential ") and " list " not in c]
    assert changes == ([expected] if expected else []), calls
    if expected == "update":
        assert "--federated-credential-id console-managed-identity" in next(c for c in calls if " update " in c)


def test_parameters_file_feeds_every_required_parameter(templates: dict[str, Any]) -> None:
    parameters = json.loads((INFRA_DIR / "main.parameters.json").read_text())["parameters"]
    declared = templates["main.bicep"]["parameters"]
    assert set(parameters) <= set(declared), f"unknown parameters: {set(parameters) - set(declared)}"
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert required <= set(parameters), f"not fed by azd: {required - set(parameters)}"
    assert parameters["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert parameters["location"]["value"] == "${AZURE_LOCATION}"
    assert parameters["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"


def test_parameters_file_feeds_the_health_alert_and_sizing_parameters_with_the_template_defaults(
    templates: dict[str, Any],
) -> None:
    """azd env variables set them; unset, each takes the template's own default (an empty list: no action group).
    The storage SKU among them: a region with no pair needs ZRS, and azd could not set it (review I)."""
    parameters = json.loads((INFRA_DIR / "main.parameters.json").read_text())["parameters"]
    declared = templates["main.bicep"]["parameters"]
    wanted = {
        "healthSweepSchedule": "AZURE_APP_CONNECTIONS_HEALTH_SWEEP_SCHEDULE",
        "healthCheckIntervalHours": "AZURE_APP_CONNECTIONS_HEALTH_CHECK_INTERVAL_HOURS",
        "expiryWarningDays": "AZURE_APP_CONNECTIONS_EXPIRY_WARNING_DAYS",
        "notifyWebhookUrl": "AZURE_APP_CONNECTIONS_NOTIFY_WEBHOOK_URL",
        "alertEmailReceivers": "AZURE_APP_CONNECTIONS_ALERT_EMAILS",
        "healthSweepSilenceWindow": "AZURE_APP_CONNECTIONS_HEALTH_SWEEP_SILENCE_WINDOW",
        "storageSkuName": "AZURE_APP_CONNECTIONS_STORAGE_SKU",
        "instanceMemoryMB": "AZURE_APP_CONNECTIONS_INSTANCE_MEMORY_MB",
        "maximumInstanceCount": "AZURE_APP_CONNECTIONS_MAXIMUM_INSTANCE_COUNT",
        "logRetentionInDays": "AZURE_APP_CONNECTIONS_LOG_RETENTION_DAYS",
    }
    for name, variable in wanted.items():
        match = re.fullmatch(r"\$\{([A-Z_]+)=(.*)\}", parameters[name]["value"])
        assert match, f"{name}: {parameters[name]['value']}"
        assert match.group(1) == variable
        default = declared[name].get("default")
        if declared[name]["type"] == "array":
            assert json.loads(match.group(2)) == default == [], name  # azd parses an array parameter's JSON
        else:
            assert match.group(2) == str(default), f"{name}: azd default {match.group(2)!r}, Bicep default {default!r}"


def test_main_uses_only_abbreviations_that_exist() -> None:
    abbreviations = json.loads((INFRA_DIR / "abbreviations.json").read_text())
    used = set(re.findall(r"\babbrs\.(\w+)", (INFRA_DIR / "main.bicep").read_text()))
    assert used and used <= set(abbreviations), used - set(abbreviations)


def test_azure_yaml_deploys_the_api_service_as_a_python_function(parse: Parse) -> None:
    azure = parse({"azure.yaml": (ROOT / "azure.yaml").read_text()})["azure.yaml"]
    api = {key: value for key, value in azure["services"]["api"].items() if key != "hooks"}
    assert api == {"project": ".", "language": "python", "host": "function"}
    assert set(azure["services"]["api"].get("hooks", {})) == {"prepackage"}  # tests/localdev/test_package.py
    assert azure.get("infra", {}).get("path", "infra") == "infra"


def test_deploy_guide_names_the_secrets_the_template_references(templates: dict[str, Any]) -> None:
    """The README names the redirect URI and points at docs/deployment.md, whose commands set every secret."""
    readme, guide = (ROOT / "README.md").read_text(), (ROOT / "docs" / "deployment.md").read_text()
    for setting in rules.OAUTH_SETTINGS:
        assert f"--name {rules.oauth_secret_name(setting)} " in guide, (
            f"docs/deployment.md: no command sets {setting}'s secret"
        )
    assert rules.REDIRECT_PATH in readme
    assert "docs/deployment.md#after-the-deployment" in readme


def test_deploy_guide_sets_the_operator_secrets_in_the_settings_vault(templates: dict[str, Any]) -> None:
    """The operator's commands (the secrets, the role fallback) target the settings vault, the output that names it;
    no document says the deploying principal gets a role on the credential vault."""
    guide = (ROOT / "docs" / "deployment.md").read_text()
    assert "VAULT=$(azd env get-value AZURE_SETTINGS_KEY_VAULT_NAME)" in guide
    assert "AZURE_SETTINGS_KEY_VAULT_NAME" in templates["main.bicep"]["outputs"]
    for setting in rules.OAUTH_SETTINGS:
        assert f'--vault-name "$VAULT" --name {rules.oauth_secret_name(setting)} ' in guide, setting
    for secret in rules.OPERATOR_SECRETS:
        assert secret in guide, f"docs/deployment.md does not say where {secret} goes"
    fallback = re.search(
        r'az role assignment create --role "([^"]+)".*--scope "\$\(az keyvault show --name "\$(\w+)"', guide
    )
    assert fallback and fallback.groups() == ("Key Vault Secrets Officer", "VAULT"), fallback
    for path in ("README.md", "docs/deployment.md", "docs/deployment-security.md"):
        text = (ROOT / path).read_text()
        assert "Secrets Officer on the vault" not in text, f"{path}: which vault?"


# ------------------------------------------------------------------------------------------------
# The rules catch a tampered template
# ------------------------------------------------------------------------------------------------

MMP_LINE = "  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'\n"
OWNER_LINE = "  'Owner': '8e3af657-a8ff-443c-a75c-2fe8c4bcb635'\n"

EXTRA_OWNER = """
resource identityOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, roleDefinitions['Owner'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Owner'])
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}
"""

# The parameters of main.bicep's two vault modules up to privateEndpoints, which tell them apart.
_VAULT_PARAMS = (
    "'\n    location: location\n    tags: tags\n    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays\n"
    "    logAnalyticsWorkspaceResourceId: monitoring.outputs.logAnalyticsId\n    "
)
CREDENTIAL_VAULT_PARAMS = "name: '${abbrs.keyVaultVaults}${resourceToken}" + _VAULT_PARAMS
SETTINGS_VAULT_PARAMS = "name: '${abbrs.keyVaultVaults}cfg-${resourceToken}" + _VAULT_PARAMS
WEBHOOK_URL_REFERENCE = (
    "NOTIFY_WEBHOOK_URL: empty(notifyWebhookUrl) ? '' : "
    "'@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/notify-webhook-url/)'"
)

# (id, file, old text, new text, a fragment of the violation it must cause)
TAMPERINGS = [
    # The settings vault: the deployer's role there only, the operator-set secrets there only
    (
        "deployer-officer-on-credential-vault",
        "app/rbac.bicep",
        "name: guid(settingsKeyVault.id, userPrincipalId, roleDefinitions['Key Vault Secrets Officer'])\n"
        "  scope: settingsKeyVault",
        "name: guid(keyVault.id, userPrincipalId, roleDefinitions['Key Vault Secrets Officer'])\n  scope: keyVault",
        "user role assignments must be exactly",
    ),
    (
        "deployer-has-no-settings-role",
        "app/rbac.bicep",
        "roleDefinitions['Key Vault Secrets Officer'])\n    principalId: userPrincipalId",
        "roleDefinitions['Key Vault Secrets Officer'])\n    principalId: identityPrincipalId",
        "user role assignments must be exactly",
    ),
    (
        "identity-writes-settings-vault",
        "app/rbac.bicep",
        "name: guid(settingsKeyVault.id, identityPrincipalId, roleDefinitions['Key Vault Secrets User'])\n"
        "  scope: settingsKeyVault\n  properties: {\n    roleDefinitionId: subscriptionResourceId("
        "'Microsoft.Authorization/roleDefinitions', roleDefinitions['Key Vault Secrets User'])",
        "name: guid(settingsKeyVault.id, identityPrincipalId, roleDefinitions['Key Vault Secrets Officer'])\n"
        "  scope: settingsKeyVault\n  properties: {\n    roleDefinitionId: subscriptionResourceId("
        "'Microsoft.Authorization/roleDefinitions', roleDefinitions['Key Vault Secrets Officer'])",
        "Key Vault Secrets User",
    ),
    (
        "oauth-secret-in-credential-vault",
        "app/api.bicep",
        "${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-app-configuration-client-id/",
        "${keyVault.properties.vaultUri}secrets/inf-app-connection-azure-app-configuration-client-id/",
        "INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_ID must reference the settings vault",
    ),
    (
        "console-secret-in-credential-vault",
        "app/api.bicep",
        "${settingsKeyVault.properties.vaultUri}secrets/console-client-secret/",
        "${keyVault.properties.vaultUri}secrets/console-client-secret/",
        "CONSOLE_CLIENT_SECRET must reference the settings vault",
    ),
    (
        "console-secret-wrong-name",
        "app/api.bicep",
        "secrets/console-client-secret/",
        "secrets/console/",
        "must reference secret console-client-secret",
    ),
    (
        "settings-vault-is-the-credential-vault",
        "main.bicep",
        "settingsKeyVaultName: settingsKeyVault.outputs.name\n    applicationInsightsName: monitoring.outputs."
        "applicationInsightsName\n    userPrincipalId",
        "settingsKeyVaultName: keyVault.outputs.name\n    applicationInsightsName: monitoring.outputs."
        "applicationInsightsName\n    userPrincipalId",
        "must not be the credential vault",
    ),
    (
        "credential-vault-url-is-the-settings-vault",
        "app/api.bicep",
        "KEY_VAULT_URL: keyVault.properties.vaultUri",
        "KEY_VAULT_URL: settingsKeyVault.properties.vaultUri",
        "KEY_VAULT_URL (the credential vault)",
    ),
    (
        "settings-output-names-the-credential-vault",
        "main.bicep",
        "output AZURE_SETTINGS_KEY_VAULT_NAME string = settingsKeyVault.outputs.name",
        "output AZURE_SETTINGS_KEY_VAULT_NAME string = keyVault.outputs.name",
        "output AZURE_SETTINGS_KEY_VAULT_NAME",
    ),
    # The webhook URL: a settings vault secret the deployment writes, referenced by NOTIFY_WEBHOOK_URL
    (
        "webhook-url-plain-setting",
        "app/api.bicep",
        WEBHOOK_URL_REFERENCE,
        "NOTIFY_WEBHOOK_URL: notifyWebhookUrl",
        "NOTIFY_WEBHOOK_URL must be a @Microsoft.KeyVault",
    ),
    (
        "webhook-url-secret-never-written",
        "app/api.bicep",
        "'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(notifyWebhookUrl)) {",
        "'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (false) {",
        "notify-webhook-url must be written once",
    ),
    (
        "webhook-url-secret-in-credential-vault",
        "app/api.bicep",
        "parent: settingsKeyVault\n  name: 'notify-webhook-url'",
        "parent: keyVault\n  name: 'notify-webhook-url'",
        "belongs in the settings vault",
    ),
    (
        "webhook-url-secret-from-a-plain-value",
        "app/api.bicep",
        "    value: notifyWebhookUrl\n",
        "    value: 'https://example.invalid/hook'\n",
        "must be a @secure() parameter",
    ),
    (
        "settings-before-the-secret",
        "app/api.bicep",
        "  dependsOn: [\n    notifyWebhookUrlSecret\n  ]\n",
        "",
        "must dependsOn notifyWebhookUrlSecret",
    ),
    # SITE_URL and the console's redirect URI: the same host, the cloud's
    (
        "redirect-host-public-cloud-only",
        "main.bicep",
        "'https://${functionAppName}.${appServiceHostSuffix}'",
        "'https://${functionAppName}.azurewebsites.net'",
        "azurewebsites.us",
    ),
    (
        "gov-host-suffix-wrong",
        "main.bicep",
        "AzureUSGovernment: 'azurewebsites.us'",
        "AzureUSGovernment: 'azurewebsites.net'",
        "in AzureUSGovernment",
    ),
    ("site-url-not-shared", "main.bicep", "siteUrl: siteBaseUrl", "siteUrl: siteUrl", "the app's siteUrl"),
    (
        "redirect-not-on-site-url",
        "main.bicep",
        "var consoleRedirectUri = '${siteBaseUrl}/auth/callback'",
        "var consoleRedirectUri = 'https://${functionAppName}.azurewebsites.net/auth/callback'",
        "CONSOLE_REDIRECT_URI",
    ),
    # Log Analytics retention and output descriptions
    (
        "log-retention-30-days",
        "main.bicep",
        "param logRetentionInDays int = 90",
        "param logRetentionInDays int = 30",
        "logRetentionInDays must default to 90",
    ),
    (
        "workspace-retention-fixed",
        "main.bicep",
        "retentionInDays: logRetentionInDays",
        "retentionInDays: 30",
        "retentionInDays",
    ),
    ("module-retention-30-days", "modules/monitoring.bicep", "int = 90", "int = 30", "retentionInDays must default"),
    (
        "undescribed-output",
        "main.bicep",
        "@description('The region of every resource.')\n",
        "",
        "output AZURE_LOCATION needs a @description",
    ),
    (
        "worker-telemetry-off",
        "app/api.bicep",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'false'",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY",
    ),
    (
        "rate-limited-sampling",
        "app/api.bicep",
        "OTEL_TRACES_SAMPLER: 'always_on'",
        "OTEL_TRACES_SAMPLER: 'microsoft.rate_limited'",
        "OTEL_TRACES_SAMPLER",
    ),
    ("https-off", "app/api.bicep", "httpsOnly: true", "httpsOnly: false", "httpsOnly"),
    ("https-renamed", "app/api.bicep", "httpsOnly: true", "supportsHttpsOnly: false", "httpsOnly"),
    ("tls-1.0", "app/api.bicep", "minTlsVersion: '1.2'", "minTlsVersion: '1.0'", "minTlsVersion"),
    ("ftps-on", "app/api.bicep", "ftpsState: 'Disabled'", "ftpsState: 'FtpsOnly'", "ftpsState"),
    (
        "scm-basic-auth",
        "app/api.bicep",
        "name: 'scm'\n  properties: {\n    allow: false",
        "name: 'scm'\n  properties: {\n    allow: true",
        "'scm'",
    ),
    ("python-3.9", "app/api.bicep", "version: '3.11'", "version: '3.9'", "runtime"),
    ("not-flex", "app/api.bicep", "name: 'FC1'", "name: 'Y1'", "sku"),
    ("system-identity", "app/api.bicep", "type: 'UserAssigned'", "type: 'SystemAssigned'", "identity.type"),
    (
        "shared-key-on",
        "modules/storage.bicep",
        "allowSharedKeyAccess: false",
        "allowSharedKeyAccess: true",
        "allowSharedKeyAccess",
    ),
    (
        "public-blobs",
        "modules/storage.bicep",
        "allowBlobPublicAccess: false",
        "allowBlobPublicAccess: true",
        "allowBlobPublicAccess",
    ),
    (
        "storage-http",
        "modules/storage.bicep",
        "supportsHttpsTrafficOnly: true",
        "supportsHttpsTrafficOnly: false",
        "supportsHttpsTrafficOnly",
    ),
    (
        "storage-tls-1.0",
        "modules/storage.bicep",
        "minimumTlsVersion: 'TLS1_2'",
        "minimumTlsVersion: 'TLS1_0'",
        "minimumTlsVersion",
    ),
    (
        "vault-access-policies",
        "modules/keyvault.bicep",
        "enableRbacAuthorization: true",
        "enableRbacAuthorization: false",
        "enableRbacAuthorization",
    ),
    ("no-purge-protection", "modules/keyvault.bicep", "    enablePurgeProtection: true\n", "", "enablePurgeProtection"),
    (
        "no-soft-delete",
        "modules/keyvault.bicep",
        "enableSoftDelete: true",
        "enableSoftDelete: false",
        "enableSoftDelete",
    ),
    (
        "insights-local-auth",
        "modules/monitoring.bicep",
        "DisableLocalAuth: true",
        "DisableLocalAuth: false",
        "DisableLocalAuth",
    ),
    (
        "workspace-local-auth",
        "modules/monitoring.bicep",
        "disableLocalAuth: true",
        "disableLocalAuth: false",
        "disableLocalAuth",
    ),
    (
        "contributor-guid",
        "app/rbac.bicep",
        "'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'",
        "'b24988ac-6180-42a0-ab88-20f7382dd24c'",
        "Storage Blob Data Owner",
    ),
    (
        "fixed-assignment-name",
        "app/rbac.bicep",
        "name: guid(applicationInsights.id, identityPrincipalId, roleDefinitions['Monitoring Metrics Publisher'])",
        "name: 'a3a8b9a4-5f0e-4c1d-9a55-0c1e2f3a4b5c'",
        "name must be guid(",
    ),
    (
        "extra-owner-role",
        "app/rbac.bicep",
        MMP_LINE,
        MMP_LINE + OWNER_LINE,
        "'Owner'",
    ),
    (
        "table-role-to-user",
        "app/rbac.bicep",
        "roleDefinitions['Storage Table Data Contributor'])\n    principalId: identityPrincipalId",
        "roleDefinitions['Storage Table Data Contributor'])\n    principalId: userPrincipalId",
        "Storage Table Data Contributor",
    ),
    (
        "vault-role-on-storage",
        "app/rbac.bicep",
        "name: guid(keyVault.id, identityPrincipalId, roleDefinitions['Key Vault Secrets Officer'])\n  scope: keyVault",
        "name: guid(storageAccount.id, identityPrincipalId, roleDefinitions['Key Vault Secrets Officer'])\n"
        "  scope: storageAccount",
        "Key Vault Secrets Officer",
    ),
    (
        "plain-oauth-secret",
        "app/api.bicep",
        "'@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-client-secrets-client-secret/)'",
        "'s3cr3t-value'",
        "INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET",
    ),
    (
        "wrong-secret-name",
        "app/api.bicep",
        "secrets/inf-app-connection-azure-key-vault-client-id/",
        "secrets/client-id/",
        "must reference secret",
    ),
    (
        "plain-api-key-setting",
        "app/api.bicep",
        "    STATE_STORAGE: 'AzureWebJobsStorage'\n",
        "    STATE_STORAGE: 'AzureWebJobsStorage'\n    PARTNER_API_KEY: 'abc123'\n",
        "PARTNER_API_KEY",
    ),
    (
        "missing-setting",
        "app/api.bicep",
        "    ROTATION_SWEEP_SCHEDULE: rotationSweepSchedule\n",
        "",
        "ROTATION_SWEEP_SCHEDULE missing",
    ),
    (
        "shared-key-connection-string",
        "app/api.bicep",
        "    STATE_STORAGE: 'AzureWebJobsStorage'\n",
        "    STATE_STORAGE: 'AzureWebJobsStorage'\n"
        "    AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;AccountName=x;"
        "AccountKey=${storageAccount.listKeys().keys[0].value}'\n",
        "AzureWebJobsStorage must not be set",
    ),
    ("undescribed-param", "main.bicep", "@description('Optional. Type of principalId.')\n", "", "param principalType"),
    (
        "required-with-default",
        "app/rbac.bicep",
        "param identityPrincipalId string\n",
        "param identityPrincipalId string = ''\n",
        "identityPrincipalId",
    ),
    # The API registration and its roles
    (
        "role-value-typo",
        "main.bicep",
        "value: 'AppConnections.Auditor'",
        "value: 'AppConnections.Audit'",
        "AppConnections.Auditor",
    ),
    (
        "role-id-not-a-guid",
        "main.bicep",
        "id: 'a022145e-3999-4adb-99a8-13d538dc05eb'",
        "id: 'admin'",
        "fixed literal GUID",
    ),
    ("app-missing-from-scoped-roles", "main.bicep", "  'azure-client-secrets'\n]", "]", "Reader.azure-client-secrets"),
    (
        "v1-tokens",
        "app/api-registration.bicep",
        "requestedAccessTokenVersion: 2",
        "requestedAccessTokenVersion: 1",
        "requestedAccessTokenVersion",
    ),
    (
        "anyone-gets-a-token",
        "app/api-registration.bicep",
        "appRoleAssignmentRequired: true",
        "appRoleAssignmentRequired: false",
        "appRoleAssignmentRequired",
    ),
    ("no-graph-extension", "app/api-registration.bicep", "extension microsoftGraphV1\n", "", "extension"),
    (
        "tenant-common",
        "app/api.bicep",
        "AUTH_TENANT_ID: tenant().tenantId",
        "AUTH_TENANT_ID: 'common'",
        "AUTH_TENANT_ID",
    ),
    ("no-audience", "app/api.bicep", "    AUTH_AUDIENCE: authAudience\n", "", "AUTH_AUDIENCE missing"),
    (
        "audience-ignores-the-registration",
        "main.bicep",
        "var effectiveAuthAudience = deployApiRegistration ? apiRegistration.outputs.appId : authAudience",
        "var effectiveAuthAudience = authAudience",
        "AUTH_AUDIENCE",
    ),
    # Audit logs to Log Analytics
    ("vault-metrics-only", "modules/keyvault.bicep", "categoryGroup: 'audit'", "categoryGroup: 'none'", "AuditEvent"),
    (
        "no-table-deletes",
        "modules/storage.bicep",
        "category: 'StorageDelete'",
        "category: 'StorageBlobLogs'",
        "StorageDelete",
    ),
    ("account-not-tables", "modules/storage.bicep", "scope: tableServices", "scope: storageAccount", "tableServices"),
    (
        "vault-logs-elsewhere",
        "modules/keyvault.bicep",
        "workspaceId: logAnalyticsWorkspaceResourceId",
        "workspaceId: 'ws'",
        "workspaceId",
    ),
    # Private networking
    (
        "private-vault-allows-all",
        "modules/keyvault.bicep",
        "defaultAction: (publicNetworkAccess == 'Disabled') ? 'Deny' : 'Allow'",
        "defaultAction: 'Allow'",
        "defaultAction",
    ),
    (
        "private-storage-public",
        "modules/storage.bicep",
        "    publicNetworkAccess: publicNetworkAccess\n",
        "    publicNetworkAccess: 'Enabled'\n",
        "publicNetworkAccess",
    ),
    ("no-table-endpoint", "main.bicep", "service: 'table'", "service: 'file'", "table"),
    (
        "site-not-integrated",
        "app/api.bicep",
        "virtualNetworkSubnetId: empty(virtualNetworkSubnetResourceId) ? null : virtualNetworkSubnetResourceId",
        "virtualNetworkSubnetId: null",
        "virtualNetworkSubnetId",
    ),
    (
        "no-route-all",
        "app/api.bicep",
        "vnetRouteAllEnabled: !empty(virtualNetworkSubnetResourceId)",
        "vnetRouteAllEnabled: false",
        "vnetRouteAllEnabled",
    ),
    (
        "wrong-delegation",
        "modules/network.bicep",
        "serviceName: 'Microsoft.App/environments'",
        "serviceName: 'Microsoft.Web/serverFarms'",
        "Microsoft.App/environments",
    ),
    ("zone-unlinked", "modules/network.bicep", "registrationEnabled: false", "registrationEnabled: true", "linked"),
    (
        "endpoints-without-private-networking",
        "main.bicep",
        CREDENTIAL_VAULT_PARAMS + "privateEndpoints: enablePrivateNetworking ? keyVaultPrivateEndpoints : []",
        CREDENTIAL_VAULT_PARAMS + "privateEndpoints: keyVaultPrivateEndpoints",
        "no private endpoint expected",
    ),
    (
        "settings-vault-without-private-endpoint",
        "main.bicep",
        SETTINGS_VAULT_PARAMS + "privateEndpoints: enablePrivateNetworking ? keyVaultPrivateEndpoints : []",
        SETTINGS_VAULT_PARAMS + "privateEndpoints: []",
        "no private endpoint for Microsoft.KeyVault/vaults of main.bicep:settingsKeyVault",
    ),
    (
        "settings-vault-public-with-private-networking",
        "main.bicep",
        SETTINGS_VAULT_PARAMS + "privateEndpoints: enablePrivateNetworking ? keyVaultPrivateEndpoints : []\n"
        "    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'",
        SETTINGS_VAULT_PARAMS + "privateEndpoints: enablePrivateNetworking ? keyVaultPrivateEndpoints : []\n"
        "    publicNetworkAccess: 'Enabled'",
        "publicNetworkAccess",
    ),
    (
        "settings-vault-logs-elsewhere",
        "main.bicep",
        SETTINGS_VAULT_PARAMS,
        SETTINGS_VAULT_PARAMS.replace("monitoring.outputs.logAnalyticsId", "'/subscriptions/0/ws'"),
        "workspaceId",
    ),
    ("no-env-tag", "main.bicep", "  'azd-env-name': environmentName\n", "  'env': environmentName\n", "azd-env-name"),
    ("no-service-tag", "app/api.bicep", "'azd-service-name': 'api'", "'azd-service-name': 'web'", "azd-service-name"),
    (
        "wrong-redirect",
        "main.bicep",
        "/organization/app-connections/azure/oauth/callback'",
        "/oauth/callback'",
        "OAUTH_REDIRECT_URI",
    ),
    # Credential health settings and the webhook secret
    (
        "no-health-schedule",
        "app/api.bicep",
        "    HEALTH_SWEEP_SCHEDULE: healthSweepSchedule\n",
        "",
        "HEALTH_SWEEP_SCHEDULE missing",
    ),
    (
        "interval-not-passed",
        "main.bicep",
        "    healthCheckIntervalHours: healthCheckIntervalHours\n",
        "",
        "HEALTH_CHECK_INTERVAL_HOURS",
    ),
    ("expiry-days-unbounded", "main.bicep", "@maxValue(365)\n", "", "expiryWarningDays"),
    ("webhook-url-in-deployment-history", "main.bicep", "@secure()\n", "", "notifyWebhookUrl must be @secure()"),
    (
        "webhook-secret-literal",
        "app/api.bicep",
        "'@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/notify-webhook-secret/)'",
        "'an-hmac-key-in-plain-sight'",
        "NOTIFY_WEBHOOK_SECRET must be a @Microsoft.KeyVault",
    ),
    (
        "webhook-secret-wrong-name",
        "app/api.bicep",
        "secrets/notify-webhook-secret/",
        "secrets/webhook/",
        "must reference secret notify-webhook-secret",
    ),
    (
        "webhook-secret-never-set",
        "app/api.bicep",
        "NOTIFY_WEBHOOK_SECRET: empty(notifyWebhookUrl) ?",
        "NOTIFY_WEBHOOK_SECRET: !empty(notifyWebhookUrl) ?",
        "NOTIFY_WEBHOOK_SECRET",
    ),
    # Alerts on the notification records
    ("alert-drops-an-event", "app/alerts.bicep", '"rotation-failed", ', "", "rotation-failed"),
    (
        "alert-on-expiring-reminders",
        "app/alerts.bicep",
        'event in ("credential-expiring")',
        'event in ("credential-expiring", "credential-expiring-reminder")',
        "credential-expiring-reminder",
    ),
    (
        "alert-on-every-trace",
        "app/alerts.bicep",
        '| where tostring(Properties.notification) == "true" ',
        "",
        "notification records only",
    ),
    (
        "alert-reads-a-misspelt-dimension",
        "app/alerts.bicep",
        "connectionId = tostring(Properties.connectionId)",
        "connectionId = tostring(Properties.connection_id)",
        "connection_id",
    ),
    (
        "alert-not-per-connection",
        "app/alerts.bicep",
        "              {\n                name: 'connectionId'\n                operator: 'Include'\n"
        "                values: [\n                  '*'\n                ]\n              }\n",
        "",
        "connectionId",
    ),
    ("alert-auto-resolves", "app/alerts.bicep", "      autoMitigate: false", "      autoMitigate: true",
     "autoMitigate"),
    ("alert-window-1h", "app/alerts.bicep", "      windowSize: 'PT15M'", "      windowSize: 'PT1H'", "windowSize"),
    ("recovered-at-sev1", "app/alerts.bicep", "severity: 4", "severity: 1", "severity"),
    (
        "alert-without-action",
        "app/alerts.bicep",
        "skipQueryValidation: true\n      actions: {\n        actionGroups: empty(emailReceivers) ? [] : [\n"
        "          actionGroup.id\n        ]",
        "skipQueryValidation: true\n      actions: {\n        actionGroups: []",
        "actionGroups",
    ),
    (
        "alerts-on-another-workspace",
        "main.bicep",
        "    logAnalyticsWorkspaceResourceId: monitoring.outputs.logAnalyticsId\n    emailReceivers",
        "    logAnalyticsWorkspaceResourceId: '/subscriptions/0/ws'\n    emailReceivers",
        "scopes",
    ),
    ("email-to-one-address", "app/alerts.bicep", "emailAddress: address", "emailAddress: emailReceivers[0]", "email"),
    (
        "no-common-alert-schema",
        "app/alerts.bicep",
        "useCommonAlertSchema: true",
        "useCommonAlertSchema: false",
        "useCommonAlertSchema",
    ),
    (
        "short-name-too-long",
        "app/alerts.bicep",
        "param actionGroupShortName string = 'AppConns'",
        "param actionGroupShortName string = 'AppConnectionsAlerts'",
        "groupShortName",
    ),
    ("service-silence-never-fires", "app/alerts.bicep", "operator: 'LessThan'", "operator: 'GreaterThan'",
     "operator/threshold"),
    ("service-silence-reads-another-record", "app/alerts.bicep", "'AppTraces | where Message startswith \"Health sweep",
     "'AppTraces | where Message startswith \"Health check", "query"),
    ("service-failures-miss-exceptions", "app/alerts.bicep", "(AppExceptions | project", "(AppRequests | project",
     "AppExceptions"),
    ("service-silence-window-too-short", "main.bicep", "param healthSweepSilenceWindow string = 'PT6H'",
     "param healthSweepSilenceWindow string = 'PT2H'", "less than three times the longest gap"),
    (
        "service-alerts-without-action",
        "app/alerts.bicep",
        "actionGroups: empty(emailReceivers) ? [] : [\n          actionGroup.id\n        ]\n      }\n      skipQuery",
        "actionGroups: []\n      }\n      skipQuery",
        "actionGroups",
    ),
    (
        "action-group-always",
        "app/alerts.bicep",
        "= if (!empty(emailReceivers)) {",
        "= {",
        "no action group expected",
    ),
]


@pytest.fixture(scope="module")
def tampered(parse: Parse, sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each tampering applied to its file and parsed (one parser run for all of them)."""
    texts = {}
    for case_id, path, old, new, _ in TAMPERINGS:
        assert sources[path].count(old) == 1, f"{case_id}: {old!r} must occur exactly once in {path}"
        texts[case_id] = sources[path].replace(old, new)
    return parse(texts)


@pytest.mark.parametrize(("case_id", "path", "old", "new", "fragment"), TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_tampered_template_is_caught(
    templates: dict[str, Any],
    tampered: dict[str, dict[str, Any]],
    case_id: str,
    path: str,
    old: str,
    new: str,
    fragment: str,
) -> None:
    assert rules.all_violations(templates) == [], "the real templates must pass before tampering means anything"
    files = {**templates, path: tampered[case_id]}
    violations = rules.all_violations(files)
    assert any(fragment in v for v in violations), f"{case_id} not caught; violations: {violations}"


def test_extra_role_assignment_for_the_identity_is_caught(
    parse: Parse, sources: dict[str, str], templates: dict[str, Any]
) -> None:
    text = (
        sources["app/rbac.bicep"].replace(
            MMP_LINE,
            MMP_LINE + OWNER_LINE,
        )
        + EXTRA_OWNER
    )
    files = {**templates, "app/rbac.bicep": parse({"rbac.bicep": text})["rbac.bicep"]}
    violations = rules.role_assignment_rules(files)
    assert any("'Owner'" in v for v in violations), violations
    assert any(re.search(r"role roleDefinitions\[Owner\]|unexpected", v) for v in violations), violations


def test_the_console_signs_in_through_the_api_registration(sources: dict[str, str]) -> None:
    """The registration is the console's confidential client: its web redirect URI is SITE_URL's /auth/callback, no
    implicit grant, and the managed identity's federated credential (api://AzureADTokenExchange) instead of a
    secret; the secret setting, where one is used, is a Key Vault reference (app_settings_rules)."""
    registration, main, api = sources["app/api-registration.bicep"], sources["main.bicep"], sources["app/api.bicep"]
    assert "redirectUris: consoleRedirectUris" in registration
    assert "enableIdTokenIssuance: false" in registration and "enableAccessTokenIssuance: false" in registration
    assert "Microsoft.Graph/applications/federatedIdentityCredentials@v1.0" in registration
    assert "'api://AzureADTokenExchange'" in registration and "subject: federatedIdentityPrincipalId" in registration
    assert "/auth/callback'" in main and "federatedIdentityPrincipalId: identity.outputs.principalId" in main
    assert "CONSOLE_CLIENT_SECRET: '@Microsoft.KeyVault(" in api
    hook = (INFRA_DIR / "hooks" / "register-api.sh").read_text()
    assert '--web-redirect-uris "$CONSOLE_REDIRECT_URI"' in hook and "--enable-id-token-issuance false" in hook
    assert "az ad app federated-credential create" in hook and "api://AzureADTokenExchange" in hook


def test_the_guide_s_az_command_gives_every_parameter_with_the_template_s_defaults(templates: dict[str, Any]) -> None:
    """`az deployment` passes the parameters file's azd placeholders literally, so the guide's command without azd
    must give every parameter of that file (a new one forgotten there failed its `@allowed` list: review R), and the
    optional ones at the template's own defaults; the count the guide states is the file's."""
    import shlex

    parameters = json.loads((INFRA_DIR / "main.parameters.json").read_text())["parameters"]
    declared = templates["main.bicep"]["parameters"]
    guide = (ROOT / "docs" / "deployment.md").read_text()
    command = guide.split("az deployment sub create", 1)[1].split("az deployment sub show", 1)[0]
    given = dict(word.split("=", 1) for word in shlex.split(command.replace("\\\n", " ")) if "=" in word)
    assert set(parameters) <= set(given), f"not given: {sorted(set(parameters) - set(given))}"
    stated = re.search(r"every one of its (\d+) parameters", guide)
    assert stated is not None and int(stated.group(1)) == len(parameters)
    for name, value in given.items():
        default = declared[name].get("default")
        if default is None or isinstance(default, dict) or value.startswith(("<", "$(")):
            continue  # required, an expression, or one the reader fills in
        expected = json.dumps(default) if isinstance(default, list) else str(default).lower() \
            if isinstance(default, bool) else str(default)
        assert value == expected, (name, value, expected)
