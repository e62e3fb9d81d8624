metadata description = 'The storage account of the Functions host, the deployment package and the state tables: Microsoft Entra ID access only, its table log sent to Log Analytics, and optionally private endpoints.'

@minLength(3)
@maxLength(24)
@description('Required. Name of the storage account (globally unique, lowercase letters and digits).')
param name string

@description('Required. Name of the blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string

@description('Required. Resource id of the Log Analytics workspace that receives the table service\'s log (StorageRead, StorageWrite, StorageDelete).')
param logAnalyticsWorkspaceResourceId string

@description('Optional. Location of the storage account.')
param location string = resourceGroup().location

@description('Optional. Tags of the storage account and its private endpoints.')
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

@description('Optional. Private endpoints of the account, each {service (blob or table), subnetResourceId, privateDnsZoneResourceId} (the Azure Verified Modules shape, reduced to what this deployment uses).')
param privateEndpoints array = []

@allowed([
  'Enabled'
  'Disabled'
])
@description('Optional. Whether the account takes traffic from public networks. Disabled goes with privateEndpoints: without a VNet the Flex Consumption host has no fixed outbound addresses to allow, so it needs the public endpoint (Entra ID RBAC still decides every data request).')
param publicNetworkAccess string = 'Enabled'

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    // checkov:skip=CKV_AZURE_35: Deny with enablePrivateNetworking=true (publicNetworkAccess Disabled, private endpoints); without it the Flex Consumption host has no fixed outbound addresses to allow, and shared keys are off, so only Entra ID RBAC grants access.
    // checkov:skip=CKV_AZURE_59: Disabled with enablePrivateNetworking=true (private endpoints); without it the Flex Consumption host reaches storage over its public endpoint, and only Entra ID RBAC grants access.
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: (publicNetworkAccess == 'Disabled') ? 'Deny' : 'Allow'
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

// The state tables (connections, schedules, history, the service's own audit log): every read, write and
// delete request to Log Analytics, in the StorageTableLogs table.
resource tableServices 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' existing = {
  parent: storageAccount
  name: 'default'
}

resource tableServicesDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: '${storageAccount.name}-table-diagnosticSettings'
  scope: tableServices
  properties: {
    workspaceId: logAnalyticsWorkspaceResourceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'Transaction'
        enabled: true
      }
    ]
  }
}

resource privateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for endpoint in privateEndpoints: {
    name: 'pep-${storageAccount.name}-${endpoint.service}'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: endpoint.subnetResourceId
      }
      privateLinkServiceConnections: [
        {
          name: 'pep-${storageAccount.name}-${endpoint.service}'
          properties: {
            privateLinkServiceId: storageAccount.id
            groupIds: [
              endpoint.service
            ]
          }
        }
      ]
    }
  }
]

resource privateDnsZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [
  for (endpoint, index) in privateEndpoints: {
    parent: privateEndpoint[index]
    name: 'default'
    properties: {
      privateDnsZoneConfigs: [
        {
          name: endpoint.service
          properties: {
            privateDnsZoneId: endpoint.privateDnsZoneResourceId
          }
        }
      ]
    }
  }
]

@description('The name of the storage account.')
output name string = storageAccount.name

@description('The resource id of the storage account.')
output resourceId string = storageAccount.id
