// Azure App Connections: the Function App (Flex Consumption), its identity, storage, vault and monitoring.
// Deploy with `azd up`, or `az deployment sub create` (see infra/README-deploy.md).
targetScope = 'subscription'

metadata name = 'Azure App Connections'
metadata description = 'Deploys the Azure App Connections Function App with a user-assigned identity, Table Storage, Key Vault and Application Insights.'

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

@description('Optional. Object id of the deploying user or principal (azd AZURE_PRINCIPAL_ID). When set, it gets Key Vault Secrets Officer on the vault so it can set the OAuth secrets.')
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

@description('Optional. Microsoft Entra authority host (AZURE_AUTHORITY_HOST). Defaults to the login endpoint of the cloud deployed to.')
param authorityHost string = environment().authentication.loginEndpoint

@description('Optional. Microsoft Graph endpoint used to rotate client secrets (GRAPH_ENDPOINT).')
param graphEndpoint string = 'https://graph.microsoft.com'

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
@description('Optional. Days Log Analytics keeps logs.')
param logRetentionInDays int = 30

// ================ //
// Variables        //
// ================ //

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentStorageContainerName = 'app-package-${take(functionAppName, 32)}-${take(toLower(uniqueString(functionAppName, resourceToken)), 7)}'

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

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentStorageContainerName
    skuName: storageSkuName
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    identityPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
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
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    siteUrl: siteUrl
    authorityHost: authorityHost
    graphEndpoint: graphEndpoint
    rotationSweepSchedule: rotationSweepSchedule
    rotationMaxConcurrency: rotationMaxConcurrency
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
  }
  // The host starts with its storage and vault roles in place.
  dependsOn: [
    rbac
  ]
}

// ================ //
// Outputs          //
// ================ //

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_FUNCTION_APP_URL string = api.outputs.uri
output SITE_URL string = api.outputs.siteUrl
output OAUTH_REDIRECT_URI string = '${api.outputs.siteUrl}/organization/app-connections/azure/oauth/callback'
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyVault.outputs.uri
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
