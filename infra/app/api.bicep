metadata description = 'The Function App (Python 3.11, Flex Consumption) running as its user-assigned identity, with its app settings.'

@description('Required. Name of the Function App.')
param name string

@description('Required. Name of the Flex Consumption plan.')
param planName string

@description('Required. Name of the user-assigned identity the app runs as.')
param identityName string

@description('Required. Name of the storage account (host storage, deployment package, state tables).')
param storageAccountName string

@description('Required. Name of the blob container that holds the deployment package.')
param deploymentContainerName string

@description('Required. Name of the credential vault (KEY_VAULT_URL): the connections\' secret material, which the service writes.')
param keyVaultName string

@description('Required. Name of the settings vault: the operator-set secrets (OAuth instance apps, console client secret, webhook signing key) and the webhook URL, which the app settings reference.')
param settingsKeyVaultName string

@description('Required. Name of the Application Insights component.')
param applicationInsightsName string

@description('Optional. Location of the plan and the app.')
param location string = resourceGroup().location

@description('Optional. Tags of the plan and the app; the app also gets azd-service-name.')
param tags object = {}

@description('Optional. Public base URL of the service (SITE_URL). Defaults to the app\'s own https URL.')
param siteUrl string = ''

@description('Optional. The Azure cloud (AZURE_CLOUD): authority host, Graph endpoint, Key Vault and App Configuration scopes, token-exchange audience.')
@allowed([
  'AzurePublicCloud'
  'AzureUSGovernment'
  'AzureChinaCloud'
])
param azureCloud string = 'AzurePublicCloud'

@description('Optional. Microsoft Entra authority host (AZURE_AUTHORITY_HOST), overriding the cloud\'s. Empty: the cloud\'s.')
param authorityHost string = ''

@description('Optional. Microsoft Graph endpoint (GRAPH_ENDPOINT), overriding the cloud\'s. Empty: the cloud\'s.')
param graphEndpoint string = ''

@description('Optional. NCRONTAB schedule of the rotation sweep (ROTATION_SWEEP_SCHEDULE).')
param rotationSweepSchedule string = '0 */5 * * * *'

@minValue(1)
@maxValue(64)
@description('Optional. Rotations run at once by one sweep (ROTATION_MAX_CONCURRENCY).')
param rotationMaxConcurrency int = 8

@allowed([
  512
  2048
  4096
])
@description('Optional. Memory of each instance, in MB.')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Optional. Most instances the app scales out to.')
param maximumInstanceCount int = 40

@description('Optional. Application (client) id of the service\'s API registration (AUTH_AUDIENCE): tokens must be issued for it. Empty: until it is set, the /api/v1 routes answer a token with 503 and the console cannot sign in.')
param authAudience string = ''

@minValue(1)
@maxValue(3650)
@description('Optional. Days the service keeps its audit log and rotation history in Table Storage (AUDIT_RETENTION_DAYS).')
param auditRetentionDays int = 365

@description('Optional. NCRONTAB schedule of the credential health sweep (HEALTH_SWEEP_SCHEDULE).')
param healthSweepSchedule string = '0 0 * * * *'

@minValue(1)
@maxValue(720)
@description('Optional. Hours between two health checks of one connection (HEALTH_CHECK_INTERVAL_HOURS).')
param healthCheckIntervalHours int = 24

@minValue(1)
@maxValue(365)
@description('Optional. Days before a credential expires that it is reported as expiring (EXPIRY_WARNING_DAYS).')
param expiryWarningDays int = 30

// Secure: a Teams or Slack workflow URL carries its own signature or token, so whoever holds it can post.
@secure()
@description('Optional. https URL that also receives each notification as a signed JSON POST. When set, it is written to the settings vault as the secret notify-webhook-url, NOTIFY_WEBHOOK_URL references that secret and NOTIFY_WEBHOOK_SECRET references the settings vault secret notify-webhook-secret, the HMAC key the operator sets. Empty: no webhook.')
param notifyWebhookUrl string = ''

@description('Optional. Resource id of the subnet (delegated to Microsoft.App/environments) the app integrates with; all its outbound traffic then goes through the VNet. Empty: no VNet integration.')
param virtualNetworkSubnetResourceId string = ''

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource settingsKeyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: settingsKeyVaultName
}

// The webhook URL is a bearer credential (whoever holds it can post): a settings vault secret, not a plain app
// setting anyone who may list the site's config could read. ARM writes it (a control-plane write of the
// deployment, no data-plane role needed); each deployment stores the parameter's value as the current version.
resource notifyWebhookUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(notifyWebhookUrl)) {
  parent: settingsKeyVault
  name: 'notify-webhook-url'
  properties: {
    // checkov:skip=CKV_AZURE_41: A workflow URL has no expiry of its own; an expiry date would silently stop the notifications (the reference would no longer resolve). It is replaced by redeploying with a new notifyWebhookUrl.
    // checkov:skip=CKV_AZURE_114: False positive: checkov does not read the properties of a conditional (= if) resource; contentType is set below.
    value: notifyWebhookUrl
    contentType: 'text/uri-list'
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy exists only in some regions; set properties.zoneRedundant where the region offers it.
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    // checkov:skip=CKV_AZURE_222: The API and the OAuth callback are public by design (browsers, callers with Entra ID tokens); VNet integration (enablePrivateNetworking) governs outbound traffic only.
    // checkov:skip=CKV_AZURE_17: Callers present Entra ID access tokens, validated by the service; browsers following the OAuth redirect to the callback carry no client certificate.
    // checkov:skip=CKV_AZURE_212: Flex Consumption scales instances itself (functionAppConfig.scaleAndConcurrency); siteConfig.numberOfWorkers does not apply.
    // checkov:skip=CKV_AZURE_213: Flex Consumption does not support the platform health check (siteConfig.healthCheckPath).
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identity.id
    // VNet integration (enablePrivateNetworking): storage, Key Vault (references included) through their private endpoints.
    virtualNetworkSubnetId: empty(virtualNetworkSubnetResourceId) ? null : virtualNetworkSubnetResourceId
    vnetRouteAllEnabled: !empty(virtualNetworkSubnetResourceId)
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov scans every Microsoft.Web/sites/config as if it were the 'web', 'logs' or 'authsettings' config; this one is 'appsettings':
  // checkov:skip=CKV_AZURE_13: False positive (authsettings check on the appsettings config); the service validates Entra ID access tokens itself (AUTH_*), no EasyAuth in front of the OAuth callback.
  // checkov:skip=CKV_AZURE_63: False positive (logs config check on the appsettings config); the app logs to Application Insights.
  // checkov:skip=CKV_AZURE_65: False positive (logs config check on the appsettings config); the app logs to Application Insights.
  // checkov:skip=CKV_AZURE_66: False positive (logs config check on the appsettings config); the app logs to Application Insights.
  // checkov:skip=CKV_AZURE_80: False positive (.NET Framework version of the web config); this is a Python app's appsettings config.
  // checkov:skip=CKV_AZURE_88: False positive (Azure Files mounts check on the appsettings config); Flex Consumption uses no content share.
  // checkov:skip=CKV_AZURE_222: False positive (publicNetworkAccess belongs to the site, skipped there with its reason); this is the appsettings config.
  parent: functionApp
  name: 'appsettings'
  properties: {
    // The host's own storage, reached with the identity.
    AzureWebJobsStorage__blobServiceUri: storageAccount.properties.primaryEndpoints.blob
    AzureWebJobsStorage__tableServiceUri: storageAccount.properties.primaryEndpoints.table
    AzureWebJobsStorage__credential: 'managedidentity'
    // The host's own page at / ("Your Functions app is up and running") goes: / is the console's redirect, and the
    // host says nothing of itself to an anonymous caller.
    AzureWebJobsDisableHomepage: 'true'
    AzureWebJobsStorage__clientId: identity.properties.clientId
    // The state tables live in the same account (STATE_STORAGE names the setting prefix).
    STATE_STORAGE: 'AzureWebJobsStorage'
    KEY_VAULT_URL: keyVault.properties.vaultUri
    KEY_VAULT_VERIFY_CHALLENGE_RESOURCE: 'true'
    AZURE_CLIENT_ID: identity.properties.clientId
    AZURE_CLOUD: azureCloud
    AZURE_AUTHORITY_HOST: authorityHost
    GRAPH_ENDPOINT: graphEndpoint
    // The federated method: the app's own user-assigned identity signs in as customers' applications that trust it
    // with a federated identity credential (issuer {authority}/{tenant}/v2.0, subject its principal id).
    FEDERATION_IDENTITY_CLIENT_ID: identity.properties.clientId
    FEDERATION_IDENTITY_PRINCIPAL_ID: identity.properties.principalId
    FEDERATION_IDENTITY_TENANT_ID: identity.properties.tenantId
    SITE_URL: effectiveSiteUrl
    ROTATION_SWEEP_SCHEDULE: rotationSweepSchedule
    ROTATION_MAX_CONCURRENCY: string(rotationMaxConcurrency)
    // Access tokens: issued by this tenant for the service's API registration (app roles in the roles claim).
    AUTH_TENANT_ID: tenant().tenantId
    AUTH_AUDIENCE: authAudience
    AUDIT_RETENTION_DAYS: string(auditRetentionDays)
    // The console's sign-in (shared.sessions): the API registration's client secret, a Key Vault reference to the
    // settings vault, set by the operator only where the managed identity's federated credential cannot be used;
    // sessions last 8 h at most and end after 30 idle minutes.
    CONSOLE_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/console-client-secret/)'
    CONSOLE_SESSION_ABSOLUTE_HOURS: '8'
    CONSOLE_SESSION_IDLE_MINUTES: '30'
    // The OAuth instance settings: Key Vault references to the settings vault, resolved with the identity; the
    // operator sets the secrets.
    INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_ID: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-key-vault-client-id/)'
    INF_APP_CONNECTION_AZURE_KEY_VAULT_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-key-vault-client-secret/)'
    INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_ID: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-app-configuration-client-id/)'
    INF_APP_CONNECTION_AZURE_APP_CONFIGURATION_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-app-configuration-client-secret/)'
    INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_ID: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-client-secrets-client-id/)'
    INF_APP_CONNECTION_AZURE_CLIENT_SECRETS_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/inf-app-connection-azure-client-secrets-client-secret/)'
    // Credential health: the sweep's schedule, how often each connection is re-checked, how early expiry warns.
    HEALTH_SWEEP_SCHEDULE: healthSweepSchedule
    HEALTH_CHECK_INTERVAL_HOURS: string(healthCheckIntervalHours)
    EXPIRY_WARNING_DAYS: string(expiryWarningDays)
    // Each notification is a log record (AppTraces, Properties.notification == "true": app/alerts.bicep alerts on it)
    // and, when the webhook is set, a POST to the URL of the settings vault secret notify-webhook-url (written above)
    // signed (HMAC-SHA256) with the settings vault secret notify-webhook-secret the operator sets, like the OAuth
    // secrets. Without a webhook both settings stay empty: no reference that could never resolve.
    NOTIFY_WEBHOOK_URL: empty(notifyWebhookUrl) ? '' : '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/notify-webhook-url/)'
    NOTIFY_WEBHOOK_SECRET: empty(notifyWebhookUrl) ? '' : '@Microsoft.KeyVault(SecretUri=${settingsKeyVault.properties.vaultUri}secrets/notify-webhook-secret/)'
    // Telemetry with Microsoft Entra ID authentication (docs/telemetry.md). host.json sets "telemetryMode":
    // "OpenTelemetry"; with this switch the Python worker configures Azure Monitor itself and makes each invocation's
    // host span the current one, so the service's spans join the host's request instead of starting traces.
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
    PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
    // Keep every trace: the distro's default (5 traces a second) could drop a failed request or a rotation in a
    // burst, and at this service's volume keeping all of them costs little (docs/telemetry.md, "Sampling",
    // estimates that volume).
    OTEL_TRACES_SAMPLER: 'always_on'
  }
  // NOTIFY_WEBHOOK_URL resolves from the first start: its secret exists before the settings do.
  dependsOn: [
    notifyWebhookUrlSecret
  ]
}

// No FTP or SCM basic-auth publishing: azd and az deploy with Microsoft Entra ID tokens.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// SITE_URL without a trailing slash: the OAuth redirect URI is built on it.
var trimmedSiteUrl = endsWith(siteUrl, '/') ? substring(siteUrl, 0, length(siteUrl) - 1) : siteUrl
var effectiveSiteUrl = empty(siteUrl) ? 'https://${functionApp.properties.defaultHostName}' : trimmedSiteUrl

@description('The name of the Function App.')
output name string = functionApp.name

@description('The Function App\'s own https URL.')
output uri string = 'https://${functionApp.properties.defaultHostName}'

@description('The public base URL of the service (SITE_URL).')
output siteUrl string = effectiveSiteUrl
