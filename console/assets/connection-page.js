// A connection's page: its details, validate / rotate / edit / re-authorize / delete, the rotation history as a
// timeline and, for an Auditor, its audit records.

import {ApiError, all, api, enc} from './api.js';
import {announce, append, badge, clear, guardWhileBusy, h, relative, time, toast} from './dom.js';
import {
  API, BASE, METHOD_NAMES, appName, can, healthBadge, navigate, show, state, statusBadge, who,
} from './app.js';
import {openConnectionDialog} from './connection-form.js';

const OUTCOME_KIND = {succeeded: 'ok', failed: 'bad', running: 'warn', interrupted: 'muted'};
const TRIGGER_NAMES = {
  manual: 'Rotate now', schedule: 'Scheduled rotation', resume: 'Resumed rotation',
  'migrate-to-federated': 'Move to federated',
  enable: 'First rotation (rotation turned on)',
  create: 'First rotation (connection created)',
};
const OUTCOME_NAMES = {succeeded: 'Succeeded', failed: 'Failed', running: 'Running', interrupted: 'Interrupted'};

function row(label, ...content) {
  return [h('dt', {}, label), h('dd', {}, ...content)];
}

function details(connection) {
  const rotation = connection.rotation || {};
  const credentials = connection.credentials || {};
  const health = connection.health || {};
  const items = [
    row('App', appName(connection.app)),
    row('Method', METHOD_NAMES[connection.method] || connection.method),
    row('Status', statusBadge(connection.status),
      connection.statusMessage ? h('span', {class: 'sub'}, connection.statusMessage) : null),
    row('Health', healthBadge(health), health.message ? h('span', {class: 'sub'}, health.message) : null,
      health.checkedAt ? h('span', {class: 'sub'}, 'Checked ', time(health.checkedAt)) : null),
    row('Tenant ID', h('code', {}, credentials.tenantId || '—')),
    connection.method !== 'oauth' ? row('Client ID', h('code', {}, credentials.clientId || '—')) : null,
    connection.authorizedBy ? row('Authorized by', connection.authorizedBy.upn || connection.authorizedBy.oid) : null,
    row('Description', connection.description || '—'),
    row('Credential expires', time(connection.credentialExpiresAt,
      connection.method === 'federated' ? 'Never (nothing secret is stored)' : 'Not known'),
      connection.credentialExpiresAt ? h('span', {class: 'sub'}, relative(connection.credentialExpiresAt)) : null),
    row('Last validated', time(connection.lastValidatedAt, 'Never')),
    row('Created', time(connection.createdAt), ' by ', who(connection.createdBy)),
    row('Changed', time(connection.updatedAt), ' by ', who(connection.updatedBy)),
  ];
  const rotationItems = connection.isAutoRotationEnabled ? [
    row('Automatic rotation', badge('ok', 'On'), ` every ${rotation.rotationInterval} days at ${rotation.rotateAt} ` +
      `(${rotation.timeZone})`),
    row('Next rotation', time(rotation.nextRotationAt),
      rotation.nextRotationAt ? h('span', {class: 'sub'}, relative(rotation.nextRotationAt)) : null),
    row('Last rotated', time(rotation.lastRotatedAt, 'Not yet')),
    rotation.lastRotationMessage ? row('Last rotation', rotation.lastRotationMessage) : null,
  ] : connection.method === 'federated'
    ? [row('Automatic rotation', badge('muted', 'Not needed'), h('span', {class: 'sub'}, 'Nothing secret is ' +
      'stored: the service signs in with its managed identity, which the application trusts.'))]
    : [row('Automatic rotation', badge('muted', 'Off'))];
  return h('dl', {class: 'details-list', id: 'connection-details'}, items, rotationItems);
}

function timeline(events) {
  if (!events.length) {
    return h('p', {class: 'empty'}, 'No rotation yet. With automatic rotation on, the first one runs when the ' +
      'connection is created; Rotate now runs one at once.');
  }
  return h('ol', {class: 'timeline', id: 'rotation-timeline'}, events.map((event) =>
    h('li', {class: `event event-${event.outcome}`},
      h('div', {class: 'when'}, time(event.startedAt)),
      h('div', {class: 'what'},
        badge(OUTCOME_KIND[event.outcome] || 'muted', OUTCOME_NAMES[event.outcome] || event.outcome),
        ` ${TRIGGER_NAMES[event.trigger] || `Rotation (${event.trigger})`}`,
        event.attempt > 1 ? `, attempt ${event.attempt}` : '',
        event.durationMs !== null && event.durationMs !== undefined ? h('span', {class: 'sub'},
          ` ${(event.durationMs / 1000).toFixed(1)} s`) : null),
      event.newKeyId ? h('div', {class: 'sub'}, event.trigger === 'migrate-to-federated'
        ? 'Federated credential: ' : 'New secret: ', h('code', {}, event.newKeyId)) : null,
      event.revokedKeyId ? h('div', {class: 'sub'}, 'Revoked: ', h('code', {}, event.revokedKeyId)) : null,
      event.message ? h('div', {class: 'sub'}, event.message) : null)));
}

function auditTable(records) {
  if (!records.length) return h('p', {class: 'empty'}, 'No audit record for this connection in the last 30 days.');
  return h('div', {class: 'table-wrap'}, h('table', {id: 'audit-table'},
    h('caption', {class: 'sr-only'}, 'Audit records of this connection'),
    h('thead', {}, h('tr', {}, ['When', 'Action', 'Outcome', 'Who', 'Detail'].map((text) =>
      h('th', {scope: 'col'}, text)))),
    h('tbody', {}, records.map((record) => h('tr', {},
      h('td', {}, time(record.at)), h('td', {}, record.action), h('td', {}, record.outcome),
      h('td', {}, record.actor.name || record.actor.id, record.actor.role ? h('div', {class: 'sub'}, record.actor.role) : null),
      h('td', {}, record.detail || ''))))));
}

/** The client secrets the service created on the application and has not revoked: what a delete removes. */
function liveKeyIds(events) {
  const revoked = new Set(events.map((event) => event.revokedKeyId).filter(Boolean));
  return [...new Set(events.filter((event) => event.outcome === 'succeeded' && event.newKeyId)
    .map((event) => event.newKeyId))].filter((key) => !revoked.has(key));
}

/** Run an action with its progress shown on the button and said in the live region. */
async function busy(button, doing, work) {
  const original = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.textContent = doing;
  announce(doing);
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = original;
  }
}

/**
 * After the page was drawn anew, the focus goes to the button of the same id, or to the heading when there is none
 * (a connection moved to federated has no Move button): the one that had it went with the old page, leaving the
 * focus on <body>. Left alone when the person has put it somewhere else meanwhile.
 */
function refocus(id) {
  const at = document.activeElement;
  if (at && at !== document.body && at.isConnected) return;
  (document.getElementById(id) || document.getElementById('page-title'))?.focus();
}

function confirmDelete(connection, events) {
  const dialog = document.getElementById('confirm-dialog');
  const body = clear(document.getElementById('confirm-dialog-body'));
  const actions = clear(document.getElementById('confirm-dialog-actions'));
  document.getElementById('confirm-dialog-title').textContent = `Delete ${connection.name}?`;
  const keys = liveKeyIds(events);
  append(body, [
    h('p', {}, `The connection ${connection.name} (${appName(connection.app)}) and its stored credential will be ` +
      'deleted. This cannot be undone.'),
    keys.length
      ? [h('p', {}, 'These credentials, which the service created, will be removed from the application:'),
        h('ul', {id: 'keys-to-remove'}, keys.map((key) => h('li', {}, h('code', {}, key))))]
      : h('p', {id: 'keys-to-remove'}, 'The service created no credential on the application: nothing is removed ' +
        'from it. The secret, certificate or sign-in you gave stays valid in Entra ID until you revoke it there.'),
    h('p', {class: 'field-error', id: 'delete-error', role: 'alert', tabindex: '-1', hidden: true})]);
  const cancel = h('button', {type: 'button', onclick: () => dialog.close()}, 'Cancel');
  const opening = {};  // this opening of the shared dialog: a DELETE that ends later closes only its own
  dialog.opening = opening;
  const run = async (force) => {
    const answer = await api('DELETE', `${API}/${enc(connection.app)}/${enc(connection.id)}${force ? '?force=true' : ''}`);
    if (dialog.opening === opening) dialog.close();
    const removed = answer.removedKeyIds.length ? ` Removed from the application: ${answer.removedKeyIds.join(', ')}.` : '';
    const left = answer.keyIdsLeftLive.length ? ` Still live on the application: ${answer.keyIdsLeftLive.join(', ')}.` : '';
    const unread = (answer.applicationsNotRead || []).length
      ? ` Not read (what the service created there is named "app-connections ${connection.id} rotation …"): ` +
        `${answer.applicationsNotRead.join(', ')}.`
      : '';
    navigate(BASE);
    toast(`The connection ${connection.name} was deleted.${removed}${left}${unread}`, left || unread ? 'error' : 'notice');
  };
  // One DELETE at a time: while one runs, every button of the dialog waits (its outcome must be seen, and a
  // second DELETE, forced or not, must not go out beside it).
  const holding = async (work) => {
    const buttons = [...actions.querySelectorAll('button')];
    for (const button of buttons) button.disabled = true;
    try {
      return await work();
    } finally {
      for (const button of buttons) button.disabled = false;
    }
  };
  const confirm = h('button', {type: 'button', class: 'danger', id: 'confirm-delete', onclick: async () => {
    try {
      await holding(() => busy(confirm, 'Deleting…', () => run(false)));
    } catch (error) {
      if (!dialog.open || dialog.opening !== opening) return toast(`Not deleted: ${error.message}`);  // closed meanwhile
      const slot = document.getElementById('delete-error');
      slot.textContent = error.message;
      slot.hidden = false;
      slot.focus();  // the disabled buttons dropped the focus: here it is read out, and Tab goes on in the dialog
      if (error instanceof ApiError && error.status === 409 && Array.isArray(error.problem.keyIds) &&
          !document.getElementById('delete-anyway')) {
        actions.append(h('button', {type: 'button', class: 'danger', id: 'delete-anyway', onclick: (event) =>
          holding(() => busy(event.target, 'Deleting…', () => run(true))).catch((again) => {
            if (dialog.open && dialog.opening === opening) {
              slot.textContent = again.message;
              slot.focus();
            } else {
              toast(`Not deleted: ${again.message}`);
            }
          })},
        'Delete anyway and leave them live'));
      }
    }
  }}, 'Delete connection');
  actions.append(cancel, confirm);
  guardWhileBusy(dialog);
  dialog.showModal();
  cancel.focus();
}

/**
 * Move a client-secret or certificate connection to the federated method: what it does, whether to revoke the
 * credential the person gave, progress while the service adds, tests and switches, then the outcome.
 */
function confirmMigrate(connection, refresh) {
  const dialog = document.getElementById('confirm-dialog');
  guardWhileBusy(dialog);  // Escape does not hide a move that is still running
  const opening = {};  // this opening of the shared dialog (see confirmDelete)
  dialog.opening = opening;
  const body = clear(document.getElementById('confirm-dialog-body'));
  const actions = clear(document.getElementById('confirm-dialog-actions'));
  document.getElementById('confirm-dialog-title').textContent = `Move ${connection.name} to federated?`;
  const given = connection.method === 'certificate' ? 'certificate' : 'client secret';
  const revoke = h('input', {type: 'checkbox', id: 'revoke-original', 'aria-describedby': 'revoke-original-hint'});
  const progress = h('p', {class: 'confirm-progress', id: 'migrate-progress', role: 'status', hidden: true});
  append(body, [
    h('p', {}, `The connection ${connection.name} (${appName(connection.app)}) stops using a stored ` +
      `${given} and signs in with the service's managed identity instead. The service:`),
    h('ol', {id: 'migrate-steps'},
      h('li', {}, 'adds the federated credential for its identity to the application (with the connection\'s ' +
        'current credential);'),
      h('li', {}, 'tests a federated sign-in, and if it never works removes what it added and changes nothing;'),
      h('li', {}, 'switches the connection to the federated method;'),
      h('li', {}, `removes the ${given}s the service itself created on the application (by rotations), and the ` +
        'stored credential.')),
    h('div', {class: 'field-check'}, revoke,
      h('label', {for: 'revoke-original'}, 'Also revoke the credential I gave')),
    h('p', {class: 'hint', id: 'revoke-original-hint'}, `Left unchecked, the ${given} you entered stays valid in ` +
      'Entra ID until you remove it there; checked, the service removes it from the application last.'),
    progress,
    h('p', {class: 'field-error', id: 'migrate-error', role: 'alert', tabindex: '-1', hidden: true})]);
  const cancel = h('button', {type: 'button', onclick: () => dialog.close()}, 'Cancel');
  const confirm = h('button', {type: 'button', class: 'primary', id: 'confirm-migrate', onclick: async () => {
    const slot = document.getElementById('migrate-error');
    slot.hidden = true;
    revoke.disabled = true;
    cancel.disabled = true;
    progress.textContent = 'Adding the federated credential, testing it, switching, then cleaning up… ' +
      'This can take a minute while Entra ID takes the credential in.';
    progress.hidden = false;
    try {
      const revokeOriginal = revoke.checked;
      const answer = await busy(confirm, 'Moving…', () => api('POST',
        `${API}/${enc(connection.app)}/${enc(connection.id)}/migrate-to-federated`, {revokeOriginal}));
      if (dialog.opening === opening) dialog.close();
      const moved = answer.appConnection;
      await refresh();
      refocus('move-to-federated');  // still there after a 202; else the heading
      if (moved.method !== 'federated') {  // 202: the request had to be answered first; the rotation sweep goes on
        toast(`The move of ${moved.name} to federated goes on in the background. ${answer.detail || ''}`, 'notice');
        return;
      }
      const message = (moved.rotation && moved.rotation.lastRotationMessage) || '';
      // Revoked as asked, unless another connection signs in with it (the message names it then).
      const revoked = revokeOriginal && /the credential given was revoked/.test(message);
      toast(`${moved.name} now signs in with the federated credential: nothing secret is stored. ` +
        (revoked ? `The ${given} you gave was revoked.` : `The ${given} you gave is still valid in Entra ID.`) +
        (message && (!/^Migrated to the federated method/.test(message) || (revokeOriginal && !revoked))
          ? ` ${message}` : ''), 'notice');
    } catch (error) {
      progress.hidden = true;
      const expected = error instanceof ApiError && error.problem.expectedFederatedCredential;
      slot.textContent = expected
        ? `${error.message} Nothing was changed.`
        : `The move did not finish: ${error.message} Moving again continues from where it stopped.`;
      slot.hidden = false;
      if (!dialog.open || dialog.opening !== opening) toast(slot.textContent);  // closed meanwhile all the same
    } finally {
      revoke.disabled = false;
      cancel.disabled = false;
    }
    if (dialog.open && dialog.opening === opening && !slot.hidden) slot.focus();  // not on <body>
  }}, 'Move to federated');
  actions.append(cancel, confirm);
  dialog.showModal();
  cancel.focus();
}

export async function renderConnection(app, id) {
  show('Loading connection…', h('p', {class: 'loading'}, 'Loading…'));
  let connection;
  try {
    connection = (await api('GET', `${API}/${enc(app)}/${enc(id)}`)).appConnection;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 400 || error.status === 403)) {
      show(error.status === 403 ? 'Not allowed' : 'Connection not found', h('p', {}, error.message),
        h('p', {}, h('a', {href: BASE, 'data-link': ''}, 'Back to App Connections')));
      return;
    }
    throw error;
  }
  const [events, audit] = await Promise.all([
    all(`${API}/${enc(app)}/${enc(id)}/rotations?limit=50`, 'rotations', 4).catch(() => []),
    can('Auditor', app)
      ? api('GET', `/api/v1/audit-logs?connectionId=${enc(connection.id)}&limit=50`).then((data) => data.auditLogs)
        .catch((error) => error)
      : Promise.resolve(null),
  ]);
  const refresh = async (message) => {
    await renderConnection(app, id);
    if (message) announce(message);
  };
  const actions = h('div', {class: 'actions', role: 'group', 'aria-label': 'Actions'});
  const writer = can('Writer', app);
  if (writer) {
    const validate = h('button', {type: 'button', id: 'validate-now', onclick: async () => {
      try {
        const answer = await busy(validate, 'Validating…', () =>
          api('POST', `${API}/${enc(app)}/${enc(id)}/validate`));
        await refresh(`Validated: ${answer.appConnection.status}.`);
      } catch (error) {
        await refresh();
        toast(`Validation failed: ${error.message}`);
      }
      refocus('validate-now');
    }}, 'Validate now');
    actions.append(validate);
  }
  const option = state.options.find((item) => item.app === app);
  const rotatable = option && option.rotationMethods.includes(connection.method);
  // Offered while rotation is on, or to finish one that stopped half way (the server refuses it otherwise).
  const rotating = connection.isAutoRotationEnabled || Boolean(connection.rotation && connection.rotation.rotationId);
  if (rotatable && can('Rotator', app) && rotating) {
    const rotate = h('button', {type: 'button', id: 'rotate-now', onclick: async () => {
      try {
        const answer = await busy(rotate, 'Rotating…', () => api('POST', `${API}/${enc(app)}/${enc(id)}/rotate`));
        const told = answer.appConnection.rotation && answer.appConnection.rotation.lastRotationMessage;
        await refresh(told || 'Rotated.');
      } catch (error) {
        await refresh();
        toast(`Rotation failed: ${error.message}`);
      }
      refocus('rotate-now');
    }}, 'Rotate now');
    actions.append(rotate);
  }
  const federated = option && option.federated;
  if (federated && federated.available && (federated.migrationMethods || []).includes(connection.method) &&
      can('Rotator', app)) {
    actions.append(h('button', {type: 'button', id: 'move-to-federated',
      onclick: () => confirmMigrate(connection, refresh)}, 'Move to federated'));
  }
  if (writer || (rotatable && can('Rotator', app))) {
    actions.append(h('button', {type: 'button', id: 'edit-connection', onclick: () => openConnectionDialog(connection)},
      'Edit'));
  }
  if (connection.method === 'oauth' && writer) {
    const reauthorize = h('button', {type: 'button', id: 'reauthorize', onclick: async () => {
      try {
        const answer = await busy(reauthorize, 'Connecting…', () =>
          api('GET', `${API}/${enc(app)}/oauth/authorize?connectionId=${enc(id)}`));
        location.assign(answer.authorizationUrl);
      } catch (error) {
        toast(`Re-authorization could not start: ${error.message}`);
      }
    }}, 'Re-authorize');
    actions.append(reauthorize);
  }
  if (writer) {
    actions.append(h('button', {type: 'button', class: 'danger', id: 'delete-connection',
      onclick: () => confirmDelete(connection, events)}, 'Delete'));
  }
  const auditSection = audit === null ? null : h('section', {'aria-labelledby': 'audit-title'},
    h('h2', {id: 'audit-title'}, 'Audit records'),
    h('p', {class: 'hint'}, 'The newest 50 of the last 30 days; the audit log (GET /api/v1/audit-logs) holds them all.'),
    audit instanceof Error ? h('p', {class: 'warning'}, `The audit records could not be loaded: ${audit.message}`)
      : auditTable(audit));
  show(connection.name,
    h('p', {class: 'crumbs'}, h('a', {href: BASE, 'data-link': ''}, 'App Connections'), ' › ', appName(app)),
    actions.childElementCount ? actions : h('p', {class: 'muted', id: 'read-only-note'},
      'You can read this connection; changing it needs the Writer or Rotator role.'),
    h('section', {'aria-labelledby': 'details-title'}, h('h2', {id: 'details-title'}, 'Details'), details(connection)),
    h('section', {'aria-labelledby': 'history-title'}, h('h2', {id: 'history-title'}, 'Rotation history'),
      timeline(events)),
    auditSection);
}
