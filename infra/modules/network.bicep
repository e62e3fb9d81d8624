metadata description = 'The private network (enablePrivateNetworking): a VNet with a subnet delegated to the Flex Consumption app\'s VNet integration and one for private endpoints, and the private DNS zones of Key Vault and Storage linked to it.'

@description('Required. Name of the virtual network.')
param name string

@description('Required. Name of the network security group of both subnets.')
param networkSecurityGroupName string

@description('Optional. Location of the virtual network and the security group (the private DNS zones are global).')
param location string = resourceGroup().location

@description('Optional. Tags of every resource.')
param tags object = {}

@description('Optional. Address space of the virtual network.')
param addressPrefix string = '10.0.0.0/16'

@description('Optional. Address prefix of the subnet the Function App integrates with (delegated to Microsoft.App/environments, as Flex Consumption requires); inside addressPrefix.')
param appSubnetAddressPrefix string = '10.0.0.0/24'

@description('Optional. Address prefix of the subnet of the private endpoints; inside addressPrefix.')
param privateEndpointSubnetAddressPrefix string = '10.0.1.0/24'

var appSubnetName = 'snet-app'
var privateEndpointSubnetName = 'snet-private-endpoints'

// The privatelink zones of the cloud deployed to: keyvaultDns is '.vault.azure.net' in the public
// cloud, so the vault's zone is privatelink.vaultcore.azure.net; storage is 'core.windows.net'.
var keyVaultDnsSuffix = substring(environment().suffixes.keyvaultDns, length('.vault.'))
var storageDnsSuffix = environment().suffixes.storage
var privateDnsZoneNames = {
  vault: 'privatelink.vaultcore.${keyVaultDnsSuffix}'
  blob: 'privatelink.blob.${storageDnsSuffix}'
  table: 'privatelink.table.${storageDnsSuffix}'
}
var privateDnsZoneServices = [
  'vault'
  'blob'
  'table'
]

// No inbound rule beyond the defaults: nothing outside the VNet reaches these subnets directly.
resource networkSecurityGroup 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: networkSecurityGroupName
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource virtualNetwork 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetAddressPrefix
          networkSecurityGroup: {
            id: networkSecurityGroup.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetAddressPrefix
          networkSecurityGroup: {
            id: networkSecurityGroup.id
          }
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource privateDnsZones 'Microsoft.Network/privateDnsZones@2020-06-01' = [
  for service in privateDnsZoneServices: {
    name: privateDnsZoneNames[service]
    location: 'global'
    tags: tags
  }
]

resource privateDnsZoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [
  for (service, index) in privateDnsZoneServices: {
    parent: privateDnsZones[index]
    name: virtualNetwork.name
    location: 'global'
    tags: tags
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: virtualNetwork.id
      }
    }
  }
]

@description('The resource id of the virtual network.')
output resourceId string = virtualNetwork.id

@description('The resource id of the subnet the Function App integrates with.')
output appSubnetResourceId string = resourceId('Microsoft.Network/virtualNetworks/subnets', virtualNetwork.name, appSubnetName)

@description('The resource id of the subnet of the private endpoints.')
output privateEndpointSubnetResourceId string = resourceId('Microsoft.Network/virtualNetworks/subnets', virtualNetwork.name, privateEndpointSubnetName)

@description('The resource ids of the private DNS zones, by private endpoint service: vault, blob, table.')
output privateDnsZoneResourceIds object = {
  vault: resourceId('Microsoft.Network/privateDnsZones', privateDnsZoneNames.vault)
  blob: resourceId('Microsoft.Network/privateDnsZones', privateDnsZoneNames.blob)
  table: resourceId('Microsoft.Network/privateDnsZones', privateDnsZoneNames.table)
}
