metadata description = 'Log search alert rules on the service\'s notification log records (a credential failed or expired, a credential expiring, a check that cannot run, a recovery), two on the service itself (its failures; its health sweep gone silent), and the action group that emails them.'

// Where the rules look: the service logs each notification (shared/notify.py, Notifier.emit) as one Python log record
// with `extra` fields; azure-monitor-opentelemetry exports it to Application Insights as a trace whose custom
// dimensions are those fields. Application Insights here is workspace-based (modules/monitoring.bicep), so the trace
// lands in the workspace's AppTraces table with the custom dimensions in its Properties column (dynamic):
//   Message    'notification <event> <app> <connectionId>'
//   Properties notification = "true", event, app, connectionId, connectionName, status, detail
// (in the component's classic view the same record is traces / customDimensions). The connection's name and the
// status message cannot be dimensions called `name` and `message`: Python's logging refuses those `extra` keys (a
// LogRecord has them) and OpenTelemetry's LoggingHandler drops them. The queries give them back those column names.
// The filter on Properties.notification also leaves out any copy of the message the Functions host may log.

@description('Required. Prefix of the alert rules\' names, e.g. app-connections-<environment>; it also appears in their display names.')
param namePrefix string

@description('Required. Name of the action group, deployed only when emailReceivers is not empty.')
param actionGroupName string

@description('Required. Resource id of the Log Analytics workspace of the workspace-based Application Insights (its AppTraces table).')
param logAnalyticsWorkspaceResourceId string

@description('Optional. Email addresses the alerts go to, one email receiver each. Empty: no action group; the rules still fire and show in Azure Monitor > Alerts.')
param emailReceivers array = []

@minLength(1)
@maxLength(12)
@description('Optional. Short name of the action group (at most 12 characters), shown as the sender of its notifications.')
param actionGroupShortName string = 'AppConns'

@allowed([
  'PT2H'
  'PT3H'
  'PT4H'
  'PT5H'
  'PT6H'
  'P1D'
  'P2D'
])
@description('Optional. How long without a finished health sweep (its "Health sweep done" log record) before the service\'s silence alert fires. Longer than the time between two health sweeps (healthSweepSchedule, hourly by default), with room for a late one.')
param healthSweepSilenceWindow string = 'PT6H'

@description('Optional. Location of the alert rules (the workspace\'s region).')
param location string = resourceGroup().location

@description('Optional. Tags of the alert rules and the action group.')
param tags object = {}

// ================ //
// The queries      //
// ================ //

// Every notification record, with its dimensions as columns (strings: alert dimensions must be string columns).
var notificationTraces = 'AppTraces | where tostring(Properties.notification) == "true" | extend event = tostring(Properties.event)'
var notificationColumns = 'project TimeGenerated, event, app = tostring(Properties.app), connectionId = tostring(Properties.connectionId), name = tostring(Properties.connectionName), status = tostring(Properties.status), message = tostring(Properties.detail)'

// Reminders: while a connection stays expiring, expired or failing, the service logs `<event>-reminder` every 24
// hours. They are separate events, so a rule that includes them fires again (one alert a day per connection):
// - the failures rule includes them: the connection still does not work and someone has to act; and the daily alert
//   is the safety net when the first one was missed (an email lost, ingestion later than the 15-minute window, the
//   action group added afterwards). rotation-failed is notified at the first failure in a row, then as
//   rotation-failed-reminder at each failed attempt once the back-off has reached a day (about daily while it lasts).
// - the expiring rule does not: the credential still works, and with EXPIRY_WARNING_DAYS = 30 its reminders would
//   email every day for a month. The first alert (the webhook's reminders, if one is set) and then credential-expired
//   suffice.
// - the unavailable rule does: the service cannot tell whether the credential works, for a day and more, until
//   someone restores its access to Entra ID, Graph or Key Vault (health-check-unavailable, then daily).
// - recovered has no reminder.
var failedQuery = '${notificationTraces} | where event in ("credential-expired", "credential-expired-reminder", "rotation-failed", "rotation-failed-reminder", "validation-failed", "validation-failed-reminder") | ${notificationColumns}'
var expiringQuery = '${notificationTraces} | where event in ("credential-expiring") | ${notificationColumns}'
var unavailableQuery = '${notificationTraces} | where event in ("health-check-unavailable", "health-check-unavailable-reminder") | ${notificationColumns}'
var recoveredQuery = '${notificationTraces} | where event in ("recovered") | ${notificationColumns}'

var rules = [
  {
    name: '${namePrefix}-credential-failed'
    displayName: '${namePrefix}: a credential failed or expired'
    description: 'An app connection\'s credential expired or failed validation (events credential-expired, validation-failed and their daily reminders): the connection does not work until someone acts. Or its rotation failed (rotation-failed, and its daily reminder while it keeps failing): it still works with its current credential, which stays in use until a retry (with back-off) succeeds. See its health and rotation history in the API.'
    severity: 1
    query: failedQuery
  }
  {
    name: '${namePrefix}-credential-expiring'
    displayName: '${namePrefix}: a credential is expiring'
    description: 'An app connection\'s credential expires within EXPIRY_WARNING_DAYS (event credential-expiring, once per connection; its daily reminders go to the webhook only). Rotate it, or enable automatic rotation.'
    severity: 2
    query: expiringQuery
  }
  {
    name: '${namePrefix}-health-check-unavailable'
    displayName: '${namePrefix}: a credential cannot be checked'
    description: 'An app connection\'s credential has not been checked for a day or more: the service cannot reach Entra ID, Microsoft Graph or Key Vault for it (event health-check-unavailable, and its daily reminder while it lasts). It may still work; nobody would know if it stopped. See the connection\'s health message and the service\'s logs.'
    severity: 2
    query: unavailableQuery
  }
  {
    name: '${namePrefix}-credential-recovered'
    displayName: '${namePrefix}: a credential works again'
    description: 'An app connection that was reported failing, expiring, expired or unchecked works again (event recovered). For information: its earlier alert needs no more action.'
    // Sev4 (Verbose), the lowest: nothing to do.
    severity: 4
    query: recoveredQuery
  }
]

// The service itself. The rules above watch the connections through the health sweep's notifications: a service
// that cannot start (a setting it refuses, a role taken away), timers that keep failing, or notifications given up
// send none of them, and silence would look like health.
// - Its failures: an exception the host or the worker reports (AppExceptions: an invocation that failed, the
//   service's log.exception records), or a log record at error or above that is not a notification (a notification
//   given up, the webhook's settings unreadable, telemetry misconfigured). One alert per window, whatever the count.
// - Its health sweep gone silent: no "Health sweep done" record (shared/health.py logs one at the end of each
//   sweep) for healthSweepSilenceWindow. Stateful: it resolves itself once sweeps finish again.
var serviceFailuresQuery = 'union (AppExceptions | project TimeGenerated, role = AppRoleName, what = strcat(ExceptionType, ": ", OuterMessage)), (AppTraces | where SeverityLevel >= 3 and tostring(Properties.notification) != "true" | project TimeGenerated, role = AppRoleName, what = Message)'
var healthSweepDoneQuery = 'AppTraces | where Message startswith "Health sweep done"'

var serviceRules = [
  {
    name: '${namePrefix}-service-failures'
    displayName: '${namePrefix}: the service failed'
    description: 'The App Connections service itself failed: an exception, or an error log record that is not a notification (a notification given up, its webhook settings unreadable). Its rows say where; see the Function App\'s Failures and logs in Application Insights.'
    severity: 2
    query: serviceFailuresQuery
    operator: 'GreaterThan'
    threshold: 0
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    autoMitigate: false
    // At most one alert an hour while it keeps failing (an outage would otherwise mail every 15 minutes).
    muteActionsDuration: 'PT1H'
  }
  {
    name: '${namePrefix}-health-sweep-silent'
    displayName: '${namePrefix}: the health sweep has not run'
    description: 'No credential health sweep finished within the window: the service is not running, or its timer fails. Until it runs again, no connection is checked and none of the credential alerts can fire. See the Function App\'s state, its Failures and its logs.'
    severity: 1
    query: healthSweepDoneQuery
    operator: 'LessThan'
    threshold: 1
    evaluationFrequency: 'PT1H'
    windowSize: healthSweepSilenceWindow
    autoMitigate: true
    muteActionsDuration: ''
  }
]

// ================ //
// Resources        //
// ================ //

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(emailReceivers)) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: actionGroupShortName
    enabled: true
    emailReceivers: [
      for (address, index) in emailReceivers: {
        name: 'email-${index}'
        emailAddress: address
        useCommonAlertSchema: true
      }
    ]
  }
}

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = [
  for rule in rules: {
    name: rule.name
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      scopes: [
        logAnalyticsWorkspaceResourceId
      ]
      // Every 15 minutes over the last 15: each record is counted by one evaluation.
      evaluationFrequency: 'PT15M'
      windowSize: 'PT15M'
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            // One alert per connection (and event): two connections failing in one window are two alerts.
            dimensions: [
              {
                name: 'app'
                operator: 'Include'
                values: [
                  '*'
                ]
              }
              {
                name: 'connectionId'
                operator: 'Include'
                values: [
                  '*'
                ]
              }
              {
                name: 'name'
                operator: 'Include'
                values: [
                  '*'
                ]
              }
              {
                name: 'event'
                operator: 'Include'
                values: [
                  '*'
                ]
              }
            ]
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      // Stateless: each notification is an event, not a condition that holds. A stateful rule would send a
      // "Resolved" email 15 minutes later, when the window holds no new record, while the credential is still
      // expired; the recovery is its own event and rule. Stateless rules fire for each window with records.
      autoMitigate: false
      // The workspace of a new deployment has no AppTraces rows until the app logs: validating the query then can
      // fail the deployment. tests/infra checks the query's shape instead.
      skipQueryValidation: true
      actions: {
        actionGroups: empty(emailReceivers) ? [] : [
          actionGroup.id
        ]
      }
    }
  }
]

resource serviceAlertRules 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = [
  for rule in serviceRules: {
    name: rule.name
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: rule.displayName
      description: rule.description
      severity: rule.severity
      enabled: true
      scopes: [
        logAnalyticsWorkspaceResourceId
      ]
      evaluationFrequency: rule.evaluationFrequency
      windowSize: rule.windowSize
      criteria: {
        allOf: [
          {
            query: rule.query
            timeAggregation: 'Count'
            operator: rule.operator
            threshold: rule.threshold
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: rule.autoMitigate
      muteActionsDuration: empty(rule.muteActionsDuration) ? null : rule.muteActionsDuration
      actions: {
        actionGroups: empty(emailReceivers) ? [] : [
          actionGroup.id
        ]
      }
      skipQueryValidation: true
    }
  }
]

@description('The resource id of the action group, or empty when there are no email receivers.')
output actionGroupResourceId string = empty(emailReceivers) ? '' : actionGroup.id

@description('The names of the alert rules on the connections\' notifications.')
output alertRuleNames array = [for rule in rules: rule.name]

@description('The names of the alert rules on the service itself.')
output serviceAlertRuleNames array = [for rule in serviceRules: rule.name]
