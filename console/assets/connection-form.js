// The Add connection (and Edit) dialog: the app, the method, the fields of the product docs, the permissions
// each app needs and the redirect URI to copy; the API's field errors shown beside their fields.
// Secret fields are write-only: they start empty, are sent once, and are cleared when the dialog closes.

import {ApiError, api, enc} from './api.js';
import {announce, clear, guardWhileBusy, h, localZone, toast} from './dom.js';
import {API, BASE, METHOD_NAMES, can, navigate, state} from './app.js';

const dialog = () => document.getElementById('connection-dialog');
const form = () => document.getElementById('connection-form');
const body = () => document.getElementById('connection-form-body');

const SECRET_FIELDS = ['clientSecret', 'certificateBody', 'privateKey'];
const KEY_ID_HINT = 'In the Azure portal, open the app registration, then Certificates & secrets: the Secret ID ' +
  'of the client secret you enter above. The service removes that secret after its first rotation.';
const KEY_ID_EDIT_HINT = 'The Secret ID (Certificates & secrets of the app registration) of the client secret ' +
  'the connection uses, or of the new one you enter above. The service removes that secret after its first rotation.';
const MAX_FILE_BYTES = 16 * 1024;

let current = null; // {mode: 'add'|'edit', app, method, connection}

function fieldId(name) {
  return `field-${name}`;
}

/** A labelled field with its hint and a slot for its error (both tied to the control by aria-describedby). */
function field(name, label, control, {hint, required = false, optional = false} = {}) {
  const id = fieldId(name);
  control.id = id;
  control.name = name;
  const describedBy = [`${id}-error`];
  if (hint) describedBy.unshift(`${id}-hint`);
  control.setAttribute('aria-describedby', describedBy.join(' '));
  if (required) control.setAttribute('aria-required', 'true');
  return h('div', {class: 'field', 'data-field': name},
    h('label', {for: id}, label, optional ? h('span', {class: 'optional'}, ' (optional)') : null),
    hint ? h('p', {class: 'hint', id: `${id}-hint`}, hint) : null,
    control,
    h('p', {class: 'field-error', id: `${id}-error`, hidden: true}));
}

function input(type, attrs = {}) {
  return h('input', {type, spellcheck: 'false', ...attrs});
}

/** A PEM field: paste it, or pick a file whose text goes into the same box. */
function pemField(name, label, hint) {
  const area = h('textarea', {rows: '5', spellcheck: 'false', autocomplete: 'off', class: 'mono',
    placeholder: name === 'privateKey' ? '-----BEGIN PRIVATE KEY-----' : '-----BEGIN CERTIFICATE-----'});
  const fileId = `${fieldId(name)}-file`;
  const picker = h('input', {type: 'file', id: fileId, accept: '.pem,.crt,.cer,.key,.txt',
    onchange: async (event) => {
      const file = event.target.files && event.target.files[0];
      if (!file) return;
      if (file.size > MAX_FILE_BYTES) {
        showErrors([{pointer: `/credentials/${name}`, detail: 'the file is larger than 16 KiB; a PEM is smaller'}]);
        event.target.value = '';
        return;
      }
      area.value = await file.text();
      event.target.value = '';
      announce(`${label}: ${file.name} read.`);
    }});
  const wrapper = field(name, label, area, {hint, required: true});
  wrapper.append(h('div', {class: 'file'}, h('label', {for: fileId}, `Or choose a file for the ${label.toLowerCase()}`),
    picker));
  return wrapper;
}

/** Choices as cards: [key, text, detail?, unavailable?] (an unavailable one is disabled, its reason beside it). */
function radios(name, legend, choices, value, onChange) {
  const reasons = choices.filter((choice) => choice[3]);
  return h('fieldset', {class: 'choices', id: `${fieldId(name)}`},
    h('legend', {}, legend),
    choices.map(([key, text, detail, unavailable]) => {
      const id = `${name}-${key}`;
      return h('div', {class: unavailable ? 'choice unavailable' : 'choice'},
        h('input', {type: 'radio', name, id, value: key, checked: key === value && !unavailable,
          disabled: Boolean(unavailable), 'aria-describedby': unavailable ? `${id}-reason` : null,
          onchange: () => onChange(key)}),
        h('label', {for: id}, text, detail ? h('span', {class: 'sub'}, detail) : null,
          unavailable ? h('span', {class: 'sub'}, 'Not available here') : null));
    }),
    reasons.map(([key, text, , unavailable]) => h('p', {class: 'hint unavailable-reason', id: `${name}-${key}-reason`},
      `${text}: ${unavailable}`)),
    h('p', {class: 'field-error', id: `${fieldId(name)}-error`, hidden: true}));
}

function copyButton(text, label) {
  return h('button', {type: 'button', class: 'small', onclick: async () => {
    try {
      await navigator.clipboard.writeText(text);
      announce(`${label} copied.`);
    } catch {
      announce(`Copying failed; select the ${label.toLowerCase()} and copy it.`);
    }
  }}, `Copy ${label}`);
}

/** The setup of the docs for this app and method: the permissions, and for OAuth the redirect URI and settings. */
function setupPanel(option, method) {
  const permissions = h('ul', {class: 'permissions'}, option.permissions.map((p) =>
    h('li', {}, h('code', {}, p.permission), ` — ${p.api} (${p.type})`)));
  const panel = h('section', {class: 'setup', 'aria-labelledby': 'setup-title'},
    h('h3', {id: 'setup-title'}, `What the application needs for ${option.name}`),
    h('p', {}, method === 'oauth'
      // OAuth signs in through the service's own registration, the one whose Redirect URI is below: the person
      // connecting consents to its delegated permissions (an administrator may consent for everyone ahead of time).
      ? 'Set these API permissions on the service\'s own app registration for OAuth (the one whose Redirect URI ' +
        'is below). The person who connects consents to the delegated ones when signing in; an administrator can ' +
        'grant admin consent for the organization ahead of time:'
      : 'Set these API permissions on your Entra ID app registration (and grant admin consent):'),
    permissions);
  if (method !== 'oauth' && option.resourceAccess) {
    panel.append(h('p', {class: 'resource-access'}, 'Signing in as the application also needs: ',
      option.resourceAccess, ' Validation checks the sign-in only.'));
  }
  if (method === 'oauth') {
    panel.append(
      h('p', {}, 'In that same registration, set this Redirect URI (platform: Web):'),
      h('div', {class: 'copy'}, h('code', {id: 'redirect-uri'}, option.redirectUri),
        copyButton(option.redirectUri, 'Redirect URI')));
    if (!option.oauthConfigured) {
      panel.append(h('p', {class: 'warning'}, 'OAuth is not set up on this service yet: set ',
        option.oauthSettings.map((name, index) => [index ? ' and ' : '', h('code', {}, name)]),
        ' to that app registration\'s Application (Client) ID and a client secret (in Azure: the secrets ',
        option.oauthSettings.map((name, index) => [index ? ' and ' : '',
          h('code', {}, name.toLowerCase().replaceAll('_', '-'))]),
        ' of the service\'s settings vault), then refresh the service\'s Key Vault references and restart it.'));
    }
  }
  if (method === 'certificate') {
    panel.append(h('p', {}, 'Upload the certificate (not the key) under Certificates & secrets of the app ' +
      'registration. The private key never leaves this service: it only signs the client assertion.'));
  }
  if (method === 'federated') panel.append(...federatedSetup(option.federated));
  return panel;
}

/** One line of a federated credential to copy: its label, its value in code, and a Copy button. */
function copyLine(id, label, text) {
  return h('div', {class: 'copy-line'}, h('span', {class: 'copy-label', id: `${id}-label`}, label),
    h('div', {class: 'copy'}, h('code', {id}, text), copyButton(text, label)));
}

/** The federated credential to add to the app registration (issuer, subject, audience), and the method's limits. */
export function federatedCredentialLines(credential, prefix = 'federated') {
  return [
    copyLine(`${prefix}-issuer`, 'Issuer', credential.issuer),
    copyLine(`${prefix}-subject`, 'Subject', credential.subject),
    copyLine(`${prefix}-audience`, 'Audience', (credential.audiences || []).join(' ')),
  ];
}

function federatedSetup(federated) {
  const credential = federated && federated.federatedCredential;
  if (!credential) {
    return [h('p', {class: 'warning'}, (federated && federated.reason) || 'The federated method is not available.')];
  }
  return [
    h('p', {}, 'Nothing secret is stored: the service signs in as the application with its own managed identity. ' +
      'In the app registration, open Certificates & secrets, then Federated credentials, add a credential for ' +
      '"Other issuer" and enter exactly:'),
    h('div', {class: 'federated-credential', id: 'federated-credential'}, federatedCredentialLines(credential)),
    h('p', {class: 'hint'}, 'Any name will do (e.g. ', h('code', {}, credential.name), '). There is nothing to rotate.'),
    h('h4', {id: 'federated-limits-title'}, 'Limits'),
    h('ul', {class: 'limits', id: 'federated-limits', 'aria-labelledby': 'federated-limits-title'},
      (federated.limits || []).map((limit) => h('li', {}, limit))),
  ];
}

/** The rotation switch and schedule; `withKeyId`: also a client secret's Key ID, a statement about the credentials
 * (which secret a rotation revokes) that needs the Writer role, as the server has it. */
function rotationFields(connection, method, withKeyId) {
  const rotation = (connection && connection.rotation) || {};
  const enabled = Boolean(connection && connection.isAutoRotationEnabled);
  const toggle = h('input', {type: 'checkbox', role: 'switch', id: fieldId('isAutoRotationEnabled'),
    name: 'isAutoRotationEnabled', checked: enabled, 'aria-describedby': 'rotation-hint',
    'aria-controls': 'rotation-settings'});
  const interval = input('number', {min: '1', max: '365', step: '1', inputmode: 'numeric',
    value: String(rotation.rotationInterval || 30)});
  const at = input('time', {value: rotation.rotateAt || '00:00', step: '60'});
  const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
  const zone = h('select', {}, [...new Set([rotation.timeZone || localZone(), 'UTC', ...zones])].map((name) =>
    h('option', {value: name, selected: name === (rotation.timeZone || localZone())}, name)));
  const settings = h('div', {id: 'rotation-settings', class: 'rotation-settings', hidden: !enabled},
    // A client secret's Key ID (of the secret given, or stored when editing): the one the first rotation removes.
    method === 'client-secret' && withKeyId ? field('clientSecretKeyId', 'Client Secret Key ID',
      input('text', {autocomplete: 'off', placeholder: '00000000-0000-0000-0000-000000000000'}),
      {hint: connection ? KEY_ID_EDIT_HINT : KEY_ID_HINT, optional: true}) : null,
    h('div', {class: 'row'},
      field('rotationInterval', 'Rotation Interval (days)', interval, {hint: 'How many days between rotations.'}),
      field('rotateAt', 'Rotate At', at, {hint: 'The local time of day the rotation runs.'}),
      field('timeZone', 'Time zone', zone, {hint: 'Your browser\'s zone unless you choose another.'})));
  toggle.addEventListener('change', () => { settings.hidden = !toggle.checked; });
  return h('section', {class: 'rotation', 'aria-labelledby': 'rotation-title'},
    h('h3', {id: 'rotation-title'}, 'Automatic Credential Rotation'),
    h('div', {class: 'switch'}, toggle, h('label', {for: fieldId('isAutoRotationEnabled')},
      'Automatic Credential Rotation')),
    h('p', {class: 'hint', id: 'rotation-hint'}, method === 'certificate'
      ? 'The service creates a new certificate (its key made in the service) on the application at once and on ' +
        'every interval, and revokes the previous one; nobody else keeps the private key you enter.'
      : 'The service creates a new client secret on the application at once and on every interval, and revokes ' +
        'the previous one; nobody else keeps the secret you enter.'),
    h('p', {class: 'field-error', id: `${fieldId('isAutoRotationEnabled')}-error`, hidden: true}),
    settings);
}

function credentialFields(method, connection) {
  const editing = Boolean(connection);
  const credentials = (connection && connection.credentials) || {};
  const tenant = input('text', {autocomplete: 'off', value: credentials.tenantId || '',
    placeholder: '00000000-0000-0000-0000-000000000000'});
  if (method === 'oauth') {
    return [field('tenantId', 'Tenant ID', tenant, {optional: true,
      hint: 'The Directory (Tenant) ID to sign in to; leave empty to sign in with any work account.'})];
  }
  const fields = [
    field('tenantId', 'Tenant ID', tenant, {required: true, hint: 'The Directory (Tenant) ID, from the app ' +
      'registration\'s Overview.'}),
    field('clientId', 'Client ID', input('text', {autocomplete: 'off', value: credentials.clientId || '',
      placeholder: '00000000-0000-0000-0000-000000000000'}), {required: true,
      hint: 'The Application (Client) ID, from the app registration\'s Overview.'}),
  ];
  const again = editing ? ' Leave empty to keep the one stored.' : '';
  if (method === 'client-secret') {
    fields.push(field('clientSecret', 'Client Secret', input('password', {autocomplete: 'off'}),
      {required: !editing, hint: `The Value of a client secret from Certificates & secrets; it is never shown again.${again}`}));
  } else if (method === 'certificate') {
    fields.push(pemField('certificateBody', 'Certificate (PEM format)',
      `The certificate you uploaded to the app registration.${again}`));
    fields.push(pemField('privateKey', 'Private Key', `Its private key (PEM, unencrypted); never shown again.${again}`));
  }
  return fields;
}

function value(name) {
  const element = document.getElementById(fieldId(name));
  if (!element) return undefined;
  if (element.type === 'checkbox') return element.checked;
  return element.value.trim() === '' ? undefined : (SECRET_FIELDS.includes(name) ? element.value : element.value.trim());
}

function build() {
  const {mode, app, method, connection} = current;
  const root = clear(body());
  const editing = mode === 'edit';
  const option = state.options.find((item) => item.app === app);
  document.getElementById('connection-dialog-title').textContent = editing ? `Edit ${connection.name}` : 'Add connection';
  // Focusable (not in the Tab order): an error tied to no field takes the focus, which the disabled submit dropped.
  const general = h('p', {class: 'field-error form-error', id: 'form-error', role: 'alert', tabindex: '-1',
    hidden: true});
  root.append(general);
  if (!editing) {
    const apps = state.options.filter((item) => can('Writer', item.app));
    root.append(radios('app', 'App', apps.map((item) => [item.app, item.name]), app, (choice) => {
      current.app = choice;
      const methods = state.options.find((item) => item.app === choice).methods;
      if (!methods.includes(current.method)) current.method = null;
      build();
      document.getElementById(`app-${choice}`).focus();
    }));
  }
  if (!option) return;
  if (method && (option.unavailableMethods || {})[method]) current.method = null;
  if (!editing) {
    const unavailable = option.unavailableMethods || {};
    root.append(radios('method', 'Method', option.methods.map((key) =>
      [key, METHOD_NAMES[key] || key, null, unavailable[key]]), method,
      (choice) => {
        current.method = choice;
        build();
        document.getElementById(`method-${choice}`).focus();
      }));
  }
  if (!current.method) return;
  root.append(setupPanel(option, method));
  const details = h('section', {class: 'details', 'aria-labelledby': 'details-title'},
    h('h3', {id: 'details-title'}, 'Connection'),
    field('name', 'Name', input('text', {autocomplete: 'off', value: connection ? connection.name : '',
      pattern: '[a-z0-9-]{1,64}', maxlength: '64'}), {required: true,
      hint: 'Lowercase letters, digits and hyphens, e.g. prod-key-vault.'}),
    field('description', 'Description', h('textarea', {rows: '2', maxlength: '1024'},
      (connection && connection.description) || ''), {optional: true}),
    credentialFields(method, connection));
  root.append(details);
  // Turning rotation on needs the Rotator role, when adding too (the server refuses it to a Writer alone).
  const rotates = option.rotationMethods.includes(method) && can('Rotator', app);
  if (editing && !can('Writer', app)) { // a Rotator alone changes the rotation only: the rest is shown, not edited
    for (const element of details.querySelectorAll('input, textarea, select')) element.disabled = true;
    details.append(h('p', {class: 'hint', id: 'rotation-only'},
      'Only the rotation can be changed here: changing the rest needs the Writer role.'));
  }
  if (rotates) root.append(rotationFields(connection, method, can('Writer', app)));
  const submitText = method === 'oauth' && !editing ? 'Connect to Azure' : editing ? 'Save changes' : 'Create connection';
  root.append(h('div', {class: 'actions'},
    h('button', {type: 'button', onclick: close}, 'Cancel'),
    h('button', {type: 'submit', class: 'primary', id: 'connection-submit'}, submitText)));
}

/** Close the dialog as the person asks (Cancel, ×): not while a request it sent is running. */
function close() {
  if (form().getAttribute('aria-busy') !== 'true') dialog().close();
}

function wipe() {
  for (const name of SECRET_FIELDS) {
    const element = document.getElementById(fieldId(name));
    if (element) element.value = '';
  }
  clear(body());
}

// -- errors -------------------------------------------------------------------------------------------
function clearErrors() {
  for (const element of body().querySelectorAll('.field-error')) {
    element.hidden = true;
    element.textContent = '';
  }
  for (const element of body().querySelectorAll('[aria-invalid]')) element.removeAttribute('aria-invalid');
  document.getElementById('expected-credential')?.remove();
}

const POINTER_FIELDS = {rotateAtUtc: 'rotateAt', credentials: 'tenantId', rotation: 'rotationInterval'};

/** Put each field error of a problem beside its field (by the last segment of its JSON Pointer). */
function showErrors(errors, detail) {
  clearErrors();
  const unplaced = [];
  let first = null;
  for (const error of errors) {
    const parts = String(error.pointer || '').split('/').filter(Boolean)
      .map((part) => part.replaceAll('~1', '/').replaceAll('~0', '~'));
    const name = [...parts].reverse().find((part) => document.getElementById(`${fieldId(part)}-error`)) ||
      POINTER_FIELDS[parts[parts.length - 1]];
    const slot = name && document.getElementById(`${fieldId(name)}-error`);
    if (!slot) {
      unplaced.push(error.pointer ? `${error.pointer}: ${error.detail}` : error.detail);
      continue;
    }
    slot.textContent = slot.textContent ? `${slot.textContent}; ${error.detail}` : error.detail;
    slot.hidden = false;
    const control = document.getElementById(fieldId(name));
    if (control && control.tagName !== 'FIELDSET') control.setAttribute('aria-invalid', 'true');
    first = first || (control && control.tagName === 'FIELDSET' ? control.querySelector('input') : control);
  }
  const general = document.getElementById('form-error');
  const lines = [detail, ...unplaced].filter(Boolean);
  if (general && lines.length) {
    general.textContent = lines.join(' ');
    general.hidden = false;
  }
  if (first) first.focus();
  else if (general && !general.hidden) general.focus();
}

/**
 * Entra refused a federated sign-in (400 with aadstsCode and expectedFederatedCredential): say beside the Client ID
 * that the application does not trust the service yet, and show the exact credential to add, ready to copy; or,
 * for an application of another tenant than the service's identity (AADSTS700236, which no credential changes),
 * that it must be registered in the identity's tenant (the problem's detail, above the form, names it).
 */
function showExpectedCredential(problem) {
  const expected = problem && problem.expectedFederatedCredential;
  if (!expected) return;
  const otherTenant = problem.aadstsCode === 'AADSTS700236';
  const code = problem.aadstsCode ? ` (${problem.aadstsCode})` : '';
  const slot = document.getElementById(`${fieldId('clientId')}-error`);
  if (slot && slot.hidden) {
    slot.textContent = otherTenant
      ? `This application is registered in another tenant than the service's identity${code}: Entra ID refuses ` +
        'it whatever federated credential it has; register it in the tenant named above the form.'
      : `This application does not trust the service's identity yet${code}: add the federated credential shown ` +
        'above the form.';
    slot.hidden = false;
    const control = document.getElementById(fieldId('clientId'));
    control.setAttribute('aria-invalid', 'true');
    control.focus();
  }
  if (otherTenant) return;
  const general = document.getElementById('form-error');
  const block = h('div', {class: 'expected-credential', id: 'expected-credential'},
    h('p', {}, `Entra ID refused the federated sign-in${code}. Add this federated credential to the app ` +
      'registration (Certificates & secrets, Federated credentials), wait a minute, and create the connection again:'),
    federatedCredentialLines(expected, 'expected'));
  general.after(block);
}

// -- submitting ---------------------------------------------------------------------------------------
function rotationBody() {
  const toggle = document.getElementById(fieldId('isAutoRotationEnabled'));
  if (!toggle) return {};
  if (!toggle.checked) return {isAutoRotationEnabled: false};
  const interval = value('rotationInterval');
  return {
    isAutoRotationEnabled: true,
    rotation: {
      rotationInterval: interval === undefined ? undefined : Number(interval),
      rotateAt: value('rotateAt'),
      timeZone: value('timeZone'),
    },
  };
}

function createBody() {
  const {method} = current;
  const result = {name: value('name'), description: value('description'), method};
  const rotation = rotationBody();
  if (method === 'client-secret') {
    result.credentials = {tenantId: value('tenantId'), clientId: value('clientId'),
      clientSecret: value('clientSecret')};
    // The Key ID is a rotation setting: while rotation is off its field is hidden, and it is not sent.
    if (rotation.isAutoRotationEnabled) result.credentials.clientSecretKeyId = value('clientSecretKeyId');
  } else if (method === 'certificate') {
    result.credentials = {tenantId: value('tenantId'), clientId: value('clientId'),
      certificateBody: value('certificateBody'), privateKey: value('privateKey')};
  } else if (method === 'federated') {
    result.credentials = {tenantId: value('tenantId'), clientId: value('clientId')};
  }
  if (rotation.isAutoRotationEnabled) Object.assign(result, rotation);
  return result;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Only what changed: an edit of the rotation alone needs only the Rotator role. */
function updateBody() {
  const {method, connection} = current;
  const result = {};
  const name = value('name');
  if (name !== connection.name) result.name = name;
  // Compared as it was shown (a description with spaces around it, or an empty one, is not a change until edited).
  const shown = document.getElementById(fieldId('description')).value;
  if (shown !== (connection.description ?? '')) result.description = value('description') ?? null;
  if (method !== 'oauth') {
    const secret = method === 'client-secret' ? {clientSecret: value('clientSecret')}
      : method === 'certificate' ? {certificateBody: value('certificateBody'), privateKey: value('privateKey')} : {};
    const ids = {tenantId: value('tenantId'), clientId: value('clientId')};
    const newMaterial = Object.values(secret).some((item) => item !== undefined);
    if (newMaterial || ids.tenantId !== connection.credentials.tenantId ||
        ids.clientId !== connection.credentials.clientId) {
      result.credentials = {...ids, ...secret};
    }
  }
  const rotation = rotationBody();
  // The Key ID, while rotation is on (its field is hidden otherwise, as when creating): with new credentials it is
  // the new secret's; alone it names the stored secret's (nothing secret is sent again).
  const keyId = value('clientSecretKeyId');
  if (method === 'client-secret' && rotation.isAutoRotationEnabled && keyId) {
    result.credentials = {...result.credentials, clientSecretKeyId: keyId};
  }
  const before = connection.rotation || {};
  if ('isAutoRotationEnabled' in rotation) {
    if (rotation.isAutoRotationEnabled !== connection.isAutoRotationEnabled) {
      Object.assign(result, rotation);
    } else if (rotation.isAutoRotationEnabled && !same(rotation.rotation,
      {rotationInterval: before.rotationInterval, rotateAt: before.rotateAt, timeZone: before.timeZone})) {
      result.rotation = rotation.rotation;
    }
  }
  return result;
}

async function submit(event) {
  event.preventDefault();
  const button = document.getElementById('connection-submit');
  if (!button || button.disabled) return;
  const opened = current;  // this opening of the dialog: its outcome goes to it only while it is the one shown
  const {mode, app, method, connection} = opened;
  const shown = () => current === opened && dialog().open;
  clearErrors();
  // Every control of the form waits while the request runs (a choice of app or method rebuilt the form, with a
  // submit button of its own: a second request could go out beside the first).
  const frozen = [...body().querySelectorAll('input, select, textarea, button')].filter((item) => !item.disabled);
  for (const item of frozen) item.disabled = true;
  const thaw = () => { for (const item of frozen) item.disabled = false; };  // before errors take the focus
  button.disabled = true;
  form().setAttribute('aria-busy', 'true');
  const closer = document.getElementById('connection-dialog-close');
  closer.disabled = true;  // the request goes on whatever the dialog does: its outcome must be seen
  const original = button.textContent;
  const done = (message, path, options) => {  // saved: the dialog goes, or a toast says so if it went already
    if (shown()) {
      wipe();
      dialog().close();
      announce(message);
      navigate(path, options);
    } else {
      toast(message, 'notice');
      if (!dialog().open) navigate(path, options);
    }
  };
  try {
    if (method === 'oauth' && mode === 'add') {
      button.textContent = 'Connecting…';
      announce('Starting the sign-in with Entra ID…');
      const params = new URLSearchParams();
      for (const name of ['name', 'description', 'tenantId']) {
        const item = value(name);
        if (item !== undefined) params.set(name, item);
      }
      const answer = await api('GET', `${API}/${enc(app)}/oauth/authorize?${params}`);
      if (!shown()) return;  // cancelled meanwhile: no sign-in is started
      wipe();
      location.assign(answer.authorizationUrl);
      return;
    }
    if (mode === 'add') {
      button.textContent = 'Creating…';
      announce('Checking the credentials with Entra ID and creating the connection…');
      const created = (await api('POST', `${API}/${enc(app)}`, createBody())).appConnection;
      done(`The connection ${created.name} was created.`, `${BASE}/${enc(created.app)}/${enc(created.id)}`);
      return;
    }
    const changes = updateBody();
    if (!Object.keys(changes).length) {
      dialog().close();
      announce('Nothing changed.');
      return;
    }
    button.textContent = 'Saving…';
    announce('Saving the changes…');
    const answer = await api('PATCH', `${API}/${enc(app)}/${enc(connection.id)}`, changes);
    done(`The connection ${answer.appConnection.name} was saved.`, `${BASE}/${enc(app)}/${enc(connection.id)}`,
      {replace: true});
  } catch (error) {
    thaw();
    if (!shown()) {  // closed meanwhile all the same (a browser may close it on a second Escape), or opened anew
      toast(`Not saved: ${error.message}`);
    } else if (error instanceof ApiError) {
      showErrors(error.fieldErrors, error.message);
      showExpectedCredential(error.problem);
      announce(`Not saved: ${error.message}`);
    } else {
      toast(error.message);
    }
  } finally {
    thaw();
    button.disabled = false;
    button.textContent = original;
    if (current === opened || current === null) {  // a dialog opened anew since has its own state
      closer.disabled = false;
      form().removeAttribute('aria-busy');
    }
  }
  // Still open and the focus dropped with the disabled button (an error shown in the toast): back on the button.
  if (shown() && !dialog().contains(document.activeElement)) button.focus();
}

let wired = false;

function wire() {
  if (wired) return;
  wired = true;
  form().addEventListener('submit', submit);
  document.getElementById('connection-dialog-close').addEventListener('click', close);
  guardWhileBusy(dialog());
  dialog().addEventListener('close', () => {
    wipe();
    const back = current && current.opener;
    current = null;
    if (back && document.contains(back)) back.focus();
  });
}

/** Open the dialog to add a connection (optionally of one app) or to edit `connection`. */
export function openConnectionDialog(connection = null) {
  wire();
  const writable = state.options.filter((item) => can('Writer', item.app));
  current = connection
    ? {mode: 'edit', app: connection.app, method: connection.method, connection}
    : {mode: 'add', app: writable.length === 1 ? writable[0].app : null, method: null, connection: null};
  current.opener = document.activeElement;
  form().removeAttribute('aria-busy');  // a request of an earlier opening, if one still runs, is not this one's
  document.getElementById('connection-dialog-close').disabled = false;
  build();
  dialog().showModal();
  const first = body().querySelector('input:not([type=hidden]), textarea, select');
  if (first) first.focus();
}
