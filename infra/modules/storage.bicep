metadata description = 'The storage account of the Functions host, the deployment package and the state tables; Microsoft Entra ID access only.'

@minLength(3)
@maxLength(24)
@description('Required. Name of the storage account (globally unique, lowercase letters and digits).')
param name string

@description('Required. Name of the blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Optional. Location of the storage account.')
param location string = resourceGroup().location

@description('Optional. Tags of the storage account.')
param tags object = {}

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
@description('Optional. Replication of the storage account. Geo-redundant by default: it keeps the state tables.')
param skuName string = 'Standard_GRS'

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    // checkov:skip=CKV_AZURE_35: The Flex Consumption host (no VNet integration) has no fixed outbound addresses to allow; shared keys are off, so only Entra ID RBAC grants access.
    // checkov:skip=CKV_AZURE_59: The Flex Consumption host (no VNet integration) reaches storage over its public endpoint; only Entra ID RBAC grants access.
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }

}

resource blobServices 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobServices
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

@description('The name of the storage account.')
output name string = storageAccount.name

@description('The resource id of the storage account.')
output resourceId string = storageAccount.id
