#!/bin/sh
# azd postprovision hook (azure.yaml): registers the service's API in Microsoft Entra ID with the Azure CLI,
# for tenants where the deploying identity cannot use the Microsoft Graph Bicep extension.
#
#   azd env set AZURE_DEPLOY_API_REGISTRATION false    # then: azd provision (or azd up)
#
# With the default (true), infra/app/api-registration.bicep registers the API and this hook does nothing.
# It makes the same registration as that module, from the template's outputs, so the roles and their ids
# are defined once, in infra/main.bicep:
#   AUTH_IDENTIFIER_URI             api://<tenant id>/app-connections-api-<token>
#   AUTH_APP_ROLES                  the app roles (JSON array of Microsoft Graph appRole objects)
#   AUTH_USER_IMPERSONATION_SCOPE   the delegated permission (JSON permissionScope object)
#   CONSOLE_REDIRECT_URI            the console's sign-in redirect URI (https://<host>/auth/callback)
#   AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID   the managed identity of the console's federated credential
#   AZURE_CLOUD                     the service's cloud (azureCloud): the federated credential's audience
#   AZURE_TENANT_ID                 the tenant deployed to: the Azure CLI must be signed in to it
# and azd's AZURE_SUBSCRIPTION_ID, which every az command on a resource names explicitly.
# Idempotent: `az ad app create` patches the application that has this display name and identifier URI.
# Needs `az login` to the same tenant as azd, as someone who may register applications; stops before changing
# anything when the Azure CLI's tenant is another one. Writes no secret anywhere (the console signs in with a
# federated credential) and prints none.
set -eu
# pipefail where the shell has it (POSIX added it only in 2024; some dash builds lack it).
if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi

if [ "${AZURE_DEPLOY_API_REGISTRATION:-true}" != "false" ]; then
    echo "register-api: the API registration is deployed by the template (AZURE_DEPLOY_API_REGISTRATION is not false)."
    exit 0
fi

missing=""
for name in AZURE_ENV_NAME AZURE_SUBSCRIPTION_ID AZURE_TENANT_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME AUTH_IDENTIFIER_URI AUTH_APP_ROLES AUTH_USER_IMPERSONATION_SCOPE CONSOLE_REDIRECT_URI AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID AZURE_CLOUD; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || missing="$missing $name"
done
if [ -n "$missing" ]; then
    echo "register-api: missing from the azd environment:$missing (outputs of infra/main.bicep; run azd provision)." >&2
    exit 1
fi

# `az ad` registers in the Azure CLI's tenant, which can differ from the one azd deployed to: the registration would
# then land in the wrong tenant and the service would reject every token. Stop before changing anything.
if ! cli_tenant="$(az account show --query tenantId --output tsv)"; then
    echo "register-api: the Azure CLI is not signed in: az login --tenant $AZURE_TENANT_ID" >&2
    exit 1
fi
lower() { printf '%s' "$1" | tr '[:upper:]' '[:lower:]'; }
if [ "$(lower "$cli_tenant")" != "$(lower "$AZURE_TENANT_ID")" ]; then
    echo "register-api: the Azure CLI is signed in to tenant '$cli_tenant', but azd deployed to tenant '$AZURE_TENANT_ID'; nothing was registered. Run: az login --tenant $AZURE_TENANT_ID (then azd provision again)." >&2
    exit 1
fi

# The audience of the console's federated credential: the token-exchange audience of AZURE_CLOUD, the one the
# service asks its managed identity's token for (shared/settings.py CLOUDS; infra/app/api-registration.bicep maps
# it the same way). Case-insensitive, as the service reads AZURE_CLOUD.
case "$(lower "$AZURE_CLOUD")" in
    azurepubliccloud) audience="api://AzureADTokenExchange" ;;
    azureusgovernment) audience="api://AzureADTokenExchangeUSGov" ;;
    azurechinacloud) audience="api://AzureADTokenExchangeChina" ;;
    *) echo "register-api: AZURE_CLOUD must be AzurePublicCloud, AzureUSGovernment or AzureChinaCloud, not '$AZURE_CLOUD'." >&2
       exit 1 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '%s\n' "$AUTH_APP_ROLES" >"$work/app-roles.json"

# The application: single tenant, v2 access tokens, the identifier URI and the app roles.
app_id="$(az ad app create \
    --display-name "App Connections API ($AZURE_ENV_NAME)" \
    --sign-in-audience AzureADMyOrg \
    --identifier-uris "$AUTH_IDENTIFIER_URI" \
    --requested-access-token-version 2 \
    --app-roles "@$work/app-roles.json" \
    --web-redirect-uris "$CONSOLE_REDIRECT_URI" \
    --enable-id-token-issuance false \
    --enable-access-token-issuance false \
    --query appId --output tsv)"
object_id="$(az ad app show --id "$app_id" --query id --output tsv)"
echo "register-api: application $app_id ($AUTH_IDENTIFIER_URI)"

# The delegated permission (no az ad app flag sets it): added once, never rewritten, so a pre-authorization
# an administrator added to api afterwards is left alone.
scopes="$(az ad app show --id "$app_id" --query "length(api.oauth2PermissionScopes)" --output tsv)"
if [ "${scopes:-0}" = "0" ]; then
    graph="$(az cloud show --query endpoints.microsoftGraphResourceId --output tsv)"
    printf '{"api": {"requestedAccessTokenVersion": 2, "oauth2PermissionScopes": [%s]}}\n' \
        "$AUTH_USER_IMPERSONATION_SCOPE" >"$work/api.json"
    az rest --method PATCH --uri "${graph%/}/v1.0/applications/$object_id" \
        --headers "Content-Type=application/json" --body "@$work/api.json" --output none
    echo "register-api: added the delegated permission user_impersonation"
fi

# The console's client credential: the managed identity's token, trusted by a federated credential (no secret).
# Made again when it names another identity, audience or issuer than this deployment's: the registration outlives
# `azd down`, and a new resource group brings a new identity (the template's module rewrites it the same way).
login="$(az cloud show --query endpoints.activeDirectory --output tsv)"
issuer="${login%/}/$AZURE_TENANT_ID/v2.0"
printf '{"name": "console-managed-identity", "issuer": "%s", "subject": "%s", "audiences": ["%s"], "description": "The App Connections service signs people in to the console."}\n' \
    "$issuer" "$AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID" "$audience" >"$work/fic.json"
fic="$(az ad app federated-credential list --id "$app_id" \
    --query "[?name=='console-managed-identity'].join(' ', [issuer, subject, join(',', audiences)])" --output tsv)"
if [ -z "$fic" ]; then
    az ad app federated-credential create --id "$app_id" --parameters "@$work/fic.json" --output none
    echo "register-api: added the console's federated credential (managed identity $AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID, audience $audience)"
elif [ "$(lower "$fic")" != "$(lower "$issuer $AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID $audience")" ]; then
    az ad app federated-credential update --id "$app_id" --federated-credential-id console-managed-identity \
        --parameters "@$work/fic.json" --output none
    echo "register-api: updated the console's federated credential to managed identity $AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID, audience $audience (it named: $fic)"
fi

# The service principal: the resource people and daemons are assigned roles on; no role, no token.
if ! az ad sp show --id "$app_id" --query id --output tsv >/dev/null 2>&1; then
    az ad sp create --id "$app_id" --output none
fi
az ad sp update --id "$app_id" --set appRoleAssignmentRequired=true --output none

# AUTH_AUDIENCE: into the azd environment (the next provision passes it as authAudience) and, so the service
# takes tokens now, into the Function App's settings.
azd env set AUTH_AUDIENCE "$app_id"
az functionapp config appsettings set --subscription "$AZURE_SUBSCRIPTION_ID" \
    --name "$AZURE_FUNCTION_APP_NAME" --resource-group "$AZURE_RESOURCE_GROUP" \
    --settings "AUTH_AUDIENCE=$app_id" --output none
echo "register-api: AUTH_AUDIENCE=$app_id set on $AZURE_FUNCTION_APP_NAME"
