metadata description = 'The Key Vault of the secret material: Azure RBAC, soft delete and purge protection.'

@minLength(3)
@maxLength(24)
@description('Required. Name of the Key Vault (globally unique).')
param name string

@description('Optional. Location of the Key Vault.')
param location string = resourceGroup().location

@description('Optional. Tags of the Key Vault.')
param tags object = {}

@minValue(7)
@maxValue(90)
@description('Optional. Days a deleted secret or vault stays recoverable.')
param softDeleteRetentionInDays int = 90

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    // checkov:skip=CKV_AZURE_109: The Flex Consumption app (no VNet integration) has no fixed outbound addresses to allow; data access is Entra ID RBAC only.
    // checkov:skip=CKV_AZURE_189: The Flex Consumption app (no VNet integration) reaches the vault over its public endpoint; data access is Entra ID RBAC only.
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

@description('The name of the Key Vault.')
output name string = keyVault.name

@description('The resource id of the Key Vault.')
output resourceId string = keyVault.id

@description('The URI of the Key Vault (KEY_VAULT_URL).')
output uri string = keyVault.properties.vaultUri
