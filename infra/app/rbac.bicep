metadata description = 'The role assignments of the Function App\'s identity, each on the one resource it needs, and optionally the deploying user\'s on the settings vault (never on the credential vault).'

@description('Required. Object (principal) id of the Function App\'s user-assigned identity.')
param identityPrincipalId string

@description('Required. Name of the storage account (host storage, deployment package, state tables).')
param storageAccountName string

@description('Required. Name of the credential vault: the connections\' secret material, which the service writes.')
param keyVaultName string

@description('Required. Name of the settings vault: the operator-set secrets the app settings reference.')
param settingsKeyVaultName string

@description('Required. Name of the Application Insights component.')
param applicationInsightsName string

@description('Optional. Object id of the deploying user or principal; when set it gets Key Vault Secrets Officer on the settings vault (and no role on the credential vault).')
param userPrincipalId string = ''

@description('Optional. Type of userPrincipalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param userPrincipalType string = 'User'

// Built-in role definition ids (the same in every tenant).
var roleDefinitions = {
  'Storage Blob Data Owner': 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  'Storage Table Data Contributor': '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  'Key Vault Secrets Officer': 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  'Key Vault Secrets User': '4633458b-17de-408a-b874-0445c86b69e6'
  'Monitoring Metrics Publisher': '3913510d-42f4-4e42-8a64-420c390055eb'
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

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Host storage (AzureWebJobsStorage blobs) and the Flex Consumption deployment package.
resource identityBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, roleDefinitions['Storage Blob Data Owner'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Storage Blob Data Owner'])
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The service's state tables (STATE_STORAGE).
resource identityTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, identityPrincipalId, roleDefinitions['Storage Table Data Contributor'])
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Storage Table Data Contributor'])
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The service writes, reads and deletes the connections' secret material in the credential vault.
resource identitySecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, identityPrincipalId, roleDefinitions['Key Vault Secrets Officer'])
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Key Vault Secrets Officer'])
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The app settings' Key Vault references resolve, with the identity, against the settings vault: read only.
resource identitySettingsSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(settingsKeyVault.id, identityPrincipalId, roleDefinitions['Key Vault Secrets User'])
  scope: settingsKeyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Key Vault Secrets User'])
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry with Microsoft Entra ID authentication (local auth is disabled).
resource identityMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, roleDefinitions['Monitoring Metrics Publisher'])
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Monitoring Metrics Publisher'])
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The deploying user sets the operator-set secrets after deployment, in the settings vault only: no standing access
// to the customers' credentials in the credential vault.
resource userSettingsSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(settingsKeyVault.id, userPrincipalId, roleDefinitions['Key Vault Secrets Officer'])
  scope: settingsKeyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitions['Key Vault Secrets Officer'])
    principalId: userPrincipalId
    principalType: userPrincipalType
  }
}
