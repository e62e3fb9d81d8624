extension microsoftGraphV1

metadata description = 'The service\'s own API registration in Microsoft Entra ID (Microsoft Graph Bicep extension): the application with its app roles and v2 access tokens, and its service principal, to which people and daemons are assigned roles.'

// The alias microsoftGraphV1 is pinned to a version of the Microsoft Graph v1.0 types in infra/bicepconfig.json.
// ARM calls Microsoft Graph as the deploying identity: a person needs the delegated Application.ReadWrite.All
// permission and an Entra role that may register applications; a pipeline's service principal needs
// Application.ReadWrite.OwnedBy (or .All). Where that cannot be had, deploy with deployApiRegistration=false:
// the postprovision hook infra/hooks/register-api.sh makes the same registration with the Azure CLI.

@description('Required. Immutable client-provided key of the application in the tenant (Microsoft Graph uniqueName).')
param uniqueName string

@description('Required. The identifier URI of the API (api://<tenant id>/<uniqueName>): scopes are asked for under it.')
param identifierUri string

@description('Required. Display name of the application and its service principal.')
param displayName string

@description('Required. App roles of the API: Microsoft Graph appRole objects {allowedMemberTypes, description, displayName, id, isEnabled, value}.')
param appRoles array

@description('Required. The delegated permission (scope) that lets a signed-in person call the API: a Microsoft Graph permissionScope object.')
param userImpersonationScope object

@description('Required. Web redirect URIs of the console\'s sign-in (https://<host>/auth/callback): the registration is the confidential client that signs people in to the console.')
param consoleRedirectUris array

@description('Optional. Principal (object) id of the managed identity that authenticates the console\'s sign-in with a federated credential (no client secret). Empty: none.')
param federatedIdentityPrincipalId string = ''

@description('Optional. Issuer of the managed identity\'s tokens: {login endpoint}{tenant}/v2.0.')
param federatedIdentityIssuer string = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

@description('Optional. The Azure cloud the service talks to (AZURE_CLOUD): the federated credential\'s audience is its token-exchange audience. Defaults to the cloud deployed to.')
@allowed([
  'AzurePublicCloud'
  'AzureUSGovernment'
  'AzureChinaCloud'
])
param azureCloud string = environment().name == 'AzureUSGovernment' || environment().name == 'AzureChinaCloud' ? environment().name : 'AzurePublicCloud'

// Each cloud's token-exchange audience, as shared/settings.py (CLOUDS) has it: the service asks its managed
// identity for a token for the audience of AZURE_CLOUD, so the federated credential must name the same one.
var tokenExchangeAudiences = {
  AzurePublicCloud: 'api://AzureADTokenExchange'
  AzureUSGovernment: 'api://AzureADTokenExchangeUSGov'
  AzureChinaCloud: 'api://AzureADTokenExchangeChina'
}

resource application 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  identifierUris: [
    identifierUri
  ]
  api: {
    // v2 tokens: issuer {authority}/{tenant}/v2.0 and audience = the application (client) id.
    requestedAccessTokenVersion: 2
    oauth2PermissionScopes: [
      userImpersonationScope
    ]
  }
  appRoles: appRoles
  // The console signs people in to this registration (authorization code + PKCE, a confidential client):
  // ID tokens only through the code flow, never the implicit grant.
  web: {
    redirectUris: consoleRedirectUris
    implicitGrantSettings: {
      enableAccessTokenIssuance: false
      enableIdTokenIssuance: false
    }
  }
}

// The console's client credential: the managed identity's token for the cloud's token-exchange audience
// (api://AzureADTokenExchange in the public cloud), no secret.
resource consoleFederatedCredential 'Microsoft.Graph/applications/federatedIdentityCredentials@v1.0' = if (!empty(federatedIdentityPrincipalId)) {
  name: '${application.uniqueName}/console-managed-identity'
  description: 'The App Connections service\'s managed identity signs people in to the console.'
  issuer: federatedIdentityIssuer
  subject: federatedIdentityPrincipalId
  audiences: [
    tokenExchangeAudiences[azureCloud]
  ]
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: application.appId
  // Only people and daemons assigned one of the roles get a token for the API at all.
  appRoleAssignmentRequired: true
}

@description('The application (client) id of the API: AUTH_AUDIENCE.')
output appId string = application.appId

@description('The application id URI of the API (api://<tenant id>/<uniqueName>).')
output identifierUri string = identifierUri

@description('The object id of the API\'s service principal: the resource of every app role assignment.')
output servicePrincipalId string = servicePrincipal.id
