metadata description = 'A Key Vault (the credential vault or the settings vault): Azure RBAC, soft delete and purge protection, its audit log sent to Log Analytics, and optionally a private endpoint.'

@minLength(3)
@maxLength(24)
@description('Required. Name of the Key Vault (globally unique).')
param name string

@description('Required. Resource id of the Log Analytics workspace that receives the vault\'s audit log (AuditEvent).')
param logAnalyticsWorkspaceResourceId string

@description('Optional. Location of the Key Vault.')
param location string = resourceGroup().location

@description('Optional. Tags of the Key Vault and its private endpoint.')
param tags object = {}

@minValue(7)
@maxValue(90)
@description('Optional. Days a deleted secret or vault stays recoverable.')
param softDeleteRetentionInDays int = 90

@description('Optional. Private endpoints of the vault, each {subnetResourceId, privateDnsZoneResourceId} (the Azure Verified Modules shape, reduced to what this deployment uses).')
param privateEndpoints array = []

@allowed([
  'Enabled'
  'Disabled'
])
@description('Optional. Whether the vault takes traffic from public networks. Disabled goes with privateEndpoints: without a VNet the Flex Consumption app has no fixed outbound addresses to allow, so it needs the public endpoint (Entra ID RBAC still decides every data request).')
param publicNetworkAccess string = 'Enabled'

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    // checkov:skip=CKV_AZURE_109: Deny with enablePrivateNetworking=true (publicNetworkAccess Disabled, private endpoints); without it the Flex Consumption app has no fixed outbound addresses to allow, and data access is Entra ID RBAC only.
    // checkov:skip=CKV_AZURE_189: Disabled with enablePrivateNetworking=true (private endpoints); without it the Flex Consumption app reaches the vault over its public endpoint, and data access is Entra ID RBAC only.
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
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: (publicNetworkAccess == 'Disabled') ? 'Deny' : 'Allow'
    }
  }
}

// Every data-plane request (who read, wrote or deleted which secret, and the outcome) to Log Analytics:
// the AzureDiagnostics table, Category 'AuditEvent'.
resource keyVaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: '${keyVault.name}-diagnosticSettings'
  scope: keyVault
  properties: {
    workspaceId: logAnalyticsWorkspaceResourceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

resource privateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = [
  for (endpoint, index) in privateEndpoints: {
    name: 'pep-${keyVault.name}-vault-${index}'
    location: location
    tags: tags
    properties: {
      subnet: {
        id: endpoint.subnetResourceId
      }
      privateLinkServiceConnections: [
        {
          name: 'pep-${keyVault.name}-vault-${index}'
          properties: {
            privateLinkServiceId: keyVault.id
            groupIds: [
              'vault'
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
          name: 'vault'
          properties: {
            privateDnsZoneId: endpoint.privateDnsZoneResourceId
          }
        }
      ]
    }
  }
]

@description('The name of the Key Vault.')
output name string = keyVault.name

@description('The resource id of the Key Vault.')
output resourceId string = keyVault.id

@description('The URI of the Key Vault.')
output uri string = keyVault.properties.vaultUri
