// Azure App Connections: the Function App (Flex Consumption), its identity, storage, vault and monitoring,
// its API registration and app roles in Microsoft Entra ID, and optionally a private network.
// Deploy with `azd up`, or `az deployment sub create` (see docs/deployment.md).
targetScope = 'subscription'

metadata name = 'Azure App Connections'
metadata description = 'Deploys the Azure App Connections Function App with a user-assigned identity, Table Storage, two Key Vaults (the connections\' credentials; the operator-set settings), Application Insights and Log Analytics (with the vaults\' and the tables\' audit logs), alert rules on credential health and on the service itself (emailed through an optional action group), its Entra ID API registration with app roles, and optionally VNet integration with private endpoints.'

// ================ //
// Parameters       //
// ================ //

@minLength(1)
@maxLength(64)
@description('Required. Name of the environment (azd AZURE_ENV_NAME); it seeds the unique resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Required. Region of every resource. It must offer the Flex Consumption plan (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Optional. Object id of the deploying user or principal (azd AZURE_PRINCIPAL_ID). When set, it gets Key Vault Secrets Officer on the settings vault only, so it can set the operator-set secrets (OAuth instance apps, console client secret, webhook signing key); it gets no role on the credential vault.')
param principalId string = ''

@description('Optional. Type of principalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@description('Optional. Name of the resource group. Defaults to rg-<environmentName>.')
param resourceGroupName string = ''

@description('Optional. Public base URL of the service (SITE_URL), e.g. a custom domain. Defaults to the Function App\'s own https URL.')
param siteUrl string = ''

@description('Optional. The Azure cloud the service talks to (AZURE_CLOUD): its authority host, Microsoft Graph endpoint, Key Vault and App Configuration scopes and token-exchange audience. Defaults to the cloud deployed to.')
@allowed([
  'AzurePublicCloud'
  'AzureUSGovernment'
  'AzureChinaCloud'
])
param azureCloud string = environment().name == 'AzureUSGovernment' || environment().name == 'AzureChinaCloud' ? environment().name : 'AzurePublicCloud'

@description('Optional. Microsoft Entra authority host (AZURE_AUTHORITY_HOST), overriding the one of azureCloud. Empty: the cloud\'s.')
param authorityHost string = ''

@description('Optional. Microsoft Graph endpoint used to rotate credentials (GRAPH_ENDPOINT), overriding the one of azureCloud. Empty: the cloud\'s.')
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
@description('Optional. Memory of each Flex Consumption instance, in MB.')
param instanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
@description('Optional. Most instances the Flex Consumption plan scales out to.')
param maximumInstanceCount int = 40

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
@description('Optional. Replication of the storage account (state tables, host storage). Use Standard_ZRS in a region without a paired region.')
param storageSkuName string = 'Standard_GRS'

@minValue(7)
@maxValue(90)
@description('Optional. Days a deleted secret or vault stays recoverable.')
param keyVaultSoftDeleteRetentionInDays int = 90

@minValue(30)
@maxValue(730)
@description('Optional. Days Log Analytics keeps logs, the Key Vault and Table Storage audit logs included: their tamper-evident copies, which the service cannot delete.')
param logRetentionInDays int = 90

@description('Optional. Register the service\'s API in Microsoft Entra ID with the Microsoft Graph Bicep extension (app/api-registration.bicep). Set false where the deploying identity cannot use it: the postprovision hook infra/hooks/register-api.sh then registers the same API with the Azure CLI.')
param deployApiRegistration bool = true

@description('Optional. Application (client) id of an API registration made outside this template (the postprovision hook sets it in the azd environment). Used only when deployApiRegistration is false.')
param authAudience string = ''

@minValue(1)
@maxValue(3650)
@description('Optional. Days the service keeps its audit log and rotation history in Table Storage (AUDIT_RETENTION_DAYS).')
param auditRetentionDays int = 365

@description('Optional. NCRONTAB schedule of the credential health sweep (HEALTH_SWEEP_SCHEDULE); each run re-checks the connections that are due.')
param healthSweepSchedule string = '0 0 * * * *'

@minValue(1)
@maxValue(720)
@description('Optional. Hours between two health checks of one connection (HEALTH_CHECK_INTERVAL_HOURS).')
param healthCheckIntervalHours int = 24

@minValue(1)
@maxValue(365)
@description('Optional. Days before a credential expires that it is reported as expiring (EXPIRY_WARNING_DAYS).')
param expiryWarningDays int = 30

// Secure: a Teams or Slack workflow URL carries its own signature or token (whoever holds it can post), so it stays
// out of the deployment history and out of the app settings: it is written to the settings vault as the secret
// notify-webhook-url, which NOTIFY_WEBHOOK_URL references.
@secure()
@description('Optional. https URL that also receives each notification (credential failing, expiring, expired, recovered; rotation failed) as a JSON POST (NOTIFY_WEBHOOK_URL, a Key Vault reference to the settings vault secret notify-webhook-url that the deployment writes): a Teams or Slack workflow, or any receiver. It is signed with HMAC-SHA256 once the settings vault secret notify-webhook-secret is set. Empty: notifications are log records and alerts only.')
param notifyWebhookUrl string = ''

@description('Optional. Email addresses the alerts on notifications go to (an action group with one email receiver each). Empty: the alert rules still fire (Azure Monitor > Alerts), with no action group.')
param alertEmailReceivers array = []

@allowed([
  'PT2H'
  'PT3H'
  'PT4H'
  'PT5H'
  'PT6H'
  'P1D'
  'P2D'
])
@description('Optional. How long without a finished health sweep before the service\'s own alert fires (it is not running, or its timer fails): longer than the time between two sweeps of healthSweepSchedule.')
param healthSweepSilenceWindow string = 'PT6H'

@description('Optional. Private networking: the Function App integrates with a new VNet, both Key Vaults and Storage get private endpoints and private DNS zones, and their public network access is disabled.')
param enablePrivateNetworking bool = false

@description('Optional. Address space of the VNet (with enablePrivateNetworking).')
param virtualNetworkAddressPrefix string = '10.0.0.0/16'

@description('Optional. Address prefix of the subnet the Function App integrates with (with enablePrivateNetworking); inside virtualNetworkAddressPrefix.')
param appSubnetAddressPrefix string = '10.0.0.0/24'

@description('Optional. Address prefix of the subnet of the private endpoints (with enablePrivateNetworking); inside virtualNetworkAddressPrefix.')
param privateEndpointSubnetAddressPrefix string = '10.0.1.0/24'

// ================ //
// Variables        //
// ================ //

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}api-${resourceToken}'

// The Function App's default host name is <name>.<the cloud's App Service suffix>. environment().name is the cloud
// deployed to; another one (none offers Flex Consumption) gets the public suffix: set siteUrl there.
var appServiceHostSuffixes = {
  AzureCloud: 'azurewebsites.net'
  AzureUSGovernment: 'azurewebsites.us'
  AzureChinaCloud: 'chinacloudsites.cn'
}
var appServiceHostSuffix = contains(appServiceHostSuffixes, environment().name) ? appServiceHostSuffixes[environment().name] : 'azurewebsites.net'
var deploymentStorageContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'

// The API registration: its identifier URI is api://<tenant id>/<uniqueName>, a pattern with the tenant's own id,
// which tenants that restrict identifier URIs to such patterns (app management policy,
// uriAdditionWithoutUniqueTenantIdentifier) accept.
var apiRegistrationUniqueName = 'app-connections-api-${resourceToken}'
var apiIdentifierUri = 'api://${tenant().tenantId}/${apiRegistrationUniqueName}'

// The app roles the service checks in the token's roles claim. Their ids are fixed: once deployed, a role's
// id must never change (assignments refer to it), and the service matches on the value.
var apiRoles = [
  {
    allowedMemberTypes: [
      'User'
      'Application'
    ]
    description: 'Read connections, their options, rotation history and health, the app registrations they see and the OpenAPI document: every GET but OAuth authorize (Writer) and the audit log (Auditor).'
    displayName: 'App Connections Reader'
    id: 'fae93c08-0e77-456d-9038-a8aa964a23ed'
    isEnabled: true
    value: 'AppConnections.Reader'
  }
  {
    allowedMemberTypes: [
      'User'
      'Application'
    ]
    description: 'Create, update, delete and validate connections, and check their health now; authorize and re-authorize OAuth connections.'
    displayName: 'App Connections Writer'
    id: '7d590b83-c17d-4ad9-bf69-29041e8cb9b4'
    isEnabled: true
    value: 'AppConnections.Writer'
  }
  {
    allowedMemberTypes: [
      'User'
      'Application'
    ]
    description: 'Rotate a connection\'s credential now; enable, change or disable its automatic rotation; migrate it to the federated method.'
    displayName: 'App Connections Rotator'
    id: 'ce056f22-f036-4e8a-8e5d-03515994ec82'
    isEnabled: true
    value: 'AppConnections.Rotator'
  }
  {
    allowedMemberTypes: [
      'User'
      'Application'
    ]
    description: 'Read the audit log.'
    displayName: 'App Connections Auditor'
    id: '2c5dc5f9-46ec-49d6-9044-d95c85171627'
    isEnabled: true
    value: 'AppConnections.Auditor'
  }
  {
    allowedMemberTypes: [
      'User'
      'Application'
    ]
    description: 'Everything the Reader, Writer, Rotator and Auditor roles allow.'
    displayName: 'App Connections Admin'
    id: 'a022145e-3999-4adb-99a8-13d538dc05eb'
    isEnabled: true
    value: 'AppConnections.Admin'
  }
]

// The apps of the service; each role also exists limited to one of them: AppConnections.<Role>.<app>.
var connectionApps = [
  'azure-key-vault'
  'azure-app-configuration'
  'azure-client-secrets'
]

// Every role x every app. guid() is deterministic, so each scoped role's id is derived once and for all
// from its role's fixed id and the app.
var appScopedApiRoles = [
  for i in range(0, length(apiRoles) * length(connectionApps)): {
    allowedMemberTypes: apiRoles[i / length(connectionApps)].allowedMemberTypes
    description: format('{0} Only {1} connections.', apiRoles[i / length(connectionApps)].description, connectionApps[i % length(connectionApps)])
    displayName: format('{0} ({1})', apiRoles[i / length(connectionApps)].displayName, connectionApps[i % length(connectionApps)])
    id: guid(apiRoles[i / length(connectionApps)].id, connectionApps[i % length(connectionApps)])
    isEnabled: true
    value: format('{0}.{1}', apiRoles[i / length(connectionApps)].value, connectionApps[i % length(connectionApps)])
  }
]

var apiAppRoles = concat(apiRoles, appScopedApiRoles)

// The delegated permission a person's client (the Azure CLI, the console) asks for.
// Admin consent only: no person can consent an application of their choosing to act as them against a service that
// holds keys to the cloud (consent phishing); an administrator grants it to the clients they trust (the Azure CLI:
// docs/deployment-security.md).
var apiUserImpersonationScope = {
  adminConsentDescription: 'Call the App Connections API as the signed-in user; what the user may do is decided by the app roles assigned to them.'
  adminConsentDisplayName: 'Access App Connections as the signed-in user'
  id: '54933db8-d0d0-4be3-9d45-8c4eacf44e2b'
  isEnabled: true
  type: 'Admin'
  userConsentDescription: 'Call App Connections on your behalf, with the roles you are assigned.'
  userConsentDisplayName: 'Access App Connections as you'
  value: 'user_impersonation'
}

// ================ //
// Resources        //
// ================ //

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? '${abbrs.resourcesResourceGroups}${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module network 'modules/network.bicep' = if (enablePrivateNetworking) {
  name: 'network'
  scope: rg
  params: {
    name: '${abbrs.networkVirtualNetworks}${resourceToken}'
    networkSecurityGroupName: '${abbrs.networkNetworkSecurityGroups}${resourceToken}'
    location: location
    tags: tags
    addressPrefix: virtualNetworkAddressPrefix
    appSubnetAddressPrefix: appSubnetAddressPrefix
    privateEndpointSubnetAddressPrefix: privateEndpointSubnetAddressPrefix
  }
}

// With private networking, the private endpoints: the host's blobs (and the deployment package), the state tables
// (the host uses no queue: HTTP and timer triggers only); and each vault (one endpoint each, in the same subnet and
// DNS zone).
var storagePrivateEndpoints = [
  {
    service: 'blob'
    subnetResourceId: network.outputs.privateEndpointSubnetResourceId
    privateDnsZoneResourceId: network.outputs.privateDnsZoneResourceIds.blob
  }
  {
    service: 'table'
    subnetResourceId: network.outputs.privateEndpointSubnetResourceId
    privateDnsZoneResourceId: network.outputs.privateDnsZoneResourceIds.table
  }
]
var keyVaultPrivateEndpoints = [
  {
    subnetResourceId: network.outputs.privateEndpointSubnetResourceId
    privateDnsZoneResourceId: network.outputs.privateDnsZoneResourceIds.vault
  }
]

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentStorageContainerName
    skuName: storageSkuName
    logAnalyticsWorkspaceResourceId: monitoring.outputs.logAnalyticsId
    privateEndpoints: enablePrivateNetworking ? storagePrivateEndpoints : []
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
  }
}

// The credential vault (KEY_VAULT_URL): every connection's secret material (appconn-*), which the service writes.
// Only the app's identity has a data role on it.
module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    logAnalyticsWorkspaceResourceId: monitoring.outputs.logAnalyticsId
    privateEndpoints: enablePrivateNetworking ? keyVaultPrivateEndpoints : []
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
  }
}

// The settings vault: only the operator-set secrets the app settings reference (inf-app-connection-*,
// console-client-secret, notify-webhook-secret) and notify-webhook-url, which this deployment writes. The app reads
// it; the deploying principal may write it, and so never holds a role on the customers' credentials.
module settingsKeyVault 'modules/keyvault.bicep' = {
  name: 'settings-keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}cfg-${resourceToken}'
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    logAnalyticsWorkspaceResourceId: monitoring.outputs.logAnalyticsId
    privateEndpoints: enablePrivateNetworking ? keyVaultPrivateEndpoints : []
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
  }
}

module apiRegistration 'app/api-registration.bicep' = if (deployApiRegistration) {
  name: 'api-registration'
  scope: rg
  params: {
    uniqueName: apiRegistrationUniqueName
    identifierUri: apiIdentifierUri
    displayName: 'App Connections API (${environmentName})'
    appRoles: apiAppRoles
    userImpersonationScope: apiUserImpersonationScope
    consoleRedirectUris: [
      consoleRedirectUri
    ]
    federatedIdentityPrincipalId: identity.outputs.principalId
    azureCloud: azureCloud
  }
}

// The service's public base URL (SITE_URL) and the console's sign-in redirect URI on the API registration. Known
// before the Function App exists (the app needs the registration's id, so its defaultHostName would be a cycle):
// siteUrl when set, else the app's default host name in the cloud deployed to. The app gets the same base URL.
var trimmedSiteUrl = endsWith(siteUrl, '/') ? substring(siteUrl, 0, length(siteUrl) - 1) : siteUrl
var siteBaseUrl = empty(siteUrl) ? 'https://${functionAppName}.${appServiceHostSuffix}' : trimmedSiteUrl
var consoleRedirectUri = '${siteBaseUrl}/auth/callback'

// The API registration's application (client) id, from the template or from the postprovision hook.
var effectiveAuthAudience = deployApiRegistration ? apiRegistration.outputs.appId : authAudience

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    identityPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    settingsKeyVaultName: settingsKeyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityName: identity.outputs.name
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentStorageContainerName
    keyVaultName: keyVault.outputs.name
    settingsKeyVaultName: settingsKeyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    siteUrl: siteBaseUrl
    azureCloud: azureCloud
    authorityHost: authorityHost
    graphEndpoint: graphEndpoint
    rotationSweepSchedule: rotationSweepSchedule
    rotationMaxConcurrency: rotationMaxConcurrency
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    authAudience: effectiveAuthAudience
    auditRetentionDays: auditRetentionDays
    healthSweepSchedule: healthSweepSchedule
    healthCheckIntervalHours: healthCheckIntervalHours
    expiryWarningDays: expiryWarningDays
    notifyWebhookUrl: notifyWebhookUrl
    virtualNetworkSubnetResourceId: enablePrivateNetworking ? network.outputs.appSubnetResourceId : ''
  }
  // The host starts with its storage and vault roles in place (Key Vault references resolve at once).
  dependsOn: [
    rbac
  ]
}

// Alerts on the service's notifications (AppTraces in the workspace), emailed when addresses are given.
module alerts 'app/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'app-connections-${environmentName}'
    actionGroupName: '${abbrs.insightsActionGroups}app-connections-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceResourceId: monitoring.outputs.logAnalyticsId
    emailReceivers: alertEmailReceivers
    healthSweepSilenceWindow: healthSweepSilenceWindow
  }
}

// ================ //
// Outputs          //
// ================ //

@description('The region of every resource.')
output AZURE_LOCATION string = location

@description('The tenant deployed to (the register-api.sh hook stops when the Azure CLI is signed in to another).')
output AZURE_TENANT_ID string = tenant().tenantId

@description('The name of the resource group.')
output AZURE_RESOURCE_GROUP string = rg.name

@description('The name of the Function App.')
output AZURE_FUNCTION_APP_NAME string = api.outputs.name

@description('The name of the Function App (azd service api).')
output SERVICE_API_NAME string = api.outputs.name

@description('The Function App\'s own https URL (azd service api).')
output SERVICE_API_URI string = api.outputs.uri

@description('The Function App\'s own https URL.')
output AZURE_FUNCTION_APP_URL string = api.outputs.uri

@description('The public base URL of the service (SITE_URL).')
output SITE_URL string = api.outputs.siteUrl

@description('The console\'s sign-in redirect URI on the API registration: SITE_URL/auth/callback.')
output CONSOLE_REDIRECT_URI string = consoleRedirectUri

@description('The principal (object) id of the Function App\'s user-assigned identity.')
output AZURE_USER_ASSIGNED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId

// The cloud of AZURE_CLOUD: the postprovision hook gives the console's federated credential its audience.
@description('The Azure cloud the service talks to (AZURE_CLOUD).')
output AZURE_CLOUD string = azureCloud

@description('The OAuth redirect URI to add to each OAuth instance app registration.')
output OAUTH_REDIRECT_URI string = '${api.outputs.siteUrl}/organization/app-connections/azure/oauth/callback'

@description('The name of the credential vault (KEY_VAULT_URL): the connections\' secret material, which only the app\'s identity may read or write.')
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name

@description('The URI of the credential vault (KEY_VAULT_URL).')
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri

@description('The name of the settings vault: set the operator-set secrets (inf-app-connection-*, console-client-secret, notify-webhook-secret) here.')
output AZURE_SETTINGS_KEY_VAULT_NAME string = settingsKeyVault.outputs.name

@description('The URI of the settings vault.')
output AZURE_SETTINGS_KEY_VAULT_ENDPOINT string = settingsKeyVault.outputs.uri

@description('The name of the storage account (host storage, deployment package, state tables).')
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name

@description('The client id of the Function App\'s user-assigned identity.')
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId

@description('The resource id of the Log Analytics workspace (telemetry and the audit logs).')
output AZURE_LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.logAnalyticsId

@description('The tenant whose tokens the service accepts (AUTH_TENANT_ID).')
output AUTH_TENANT_ID string = tenant().tenantId

@description('The application (client) id of the API registration (AUTH_AUDIENCE).')
output AUTH_AUDIENCE string = effectiveAuthAudience

@description('The identifier URI of the API registration: api://<tenant id>/app-connections-api-<token>.')
output AUTH_IDENTIFIER_URI string = apiIdentifierUri

// For the postprovision hook (deployApiRegistration=false): the same roles and scope, by the same ids.
@description('The app roles of the API registration (Microsoft Graph appRole objects).')
output AUTH_APP_ROLES array = apiAppRoles

@description('The delegated permission user_impersonation of the API registration (a Microsoft Graph permissionScope object).')
output AUTH_USER_IMPERSONATION_SCOPE object = apiUserImpersonationScope
