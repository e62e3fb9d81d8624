metadata description = 'Log Analytics and workspace-based Application Insights, both reachable with Microsoft Entra ID only.'

@description('Required. Name of the Log Analytics workspace.')
param logAnalyticsName string

@description('Required. Name of the Application Insights component.')
param applicationInsightsName string

@description('Optional. Location of both resources.')
param location string = resourceGroup().location

@description('Optional. Tags of both resources.')
param tags object = {}

@minValue(30)
@maxValue(730)
@description('Optional. Days the workspace keeps data.')
param retentionInDays int = 90

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

@description('The name of the Application Insights component.')
output applicationInsightsName string = applicationInsights.name

@description('The resource id of the Log Analytics workspace.')
output logAnalyticsId string = logAnalytics.id
