// The App Connections page: the session, the routes (the list and a connection's page) and the list itself.

import {ApiError, all, api, enc, goToSignIn, setSession} from './api.js';
import {announce, badge, clear, guardWhileBusy, h, hideToast, time, toast} from './dom.js';
import {openConnectionDialog} from './connection-form.js';
import {renderConnection} from './connection-page.js';

export const BASE = '/organization/app-connections';
export const API = '/api/v1/app-connections';
export const METHOD_NAMES = {
  'oauth': 'OAuth', 'client-secret': 'Client Secret', 'certificate': 'Certificate', 'federated': 'Federated',
};
export const STATUS_NAMES = {
  'active': 'Active', 'invalid': 'Invalid', 'deleting': 'Being deleted',
  'reauthorization-required': 'Re-authorization required',
};
export const HEALTH_NAMES = {
  healthy: 'Healthy', expiring: 'Expiring', failing: 'Failing', expired: 'Expired', unknown: 'Not checked yet',
};
const STATUS_KIND = {'active': 'ok', 'invalid': 'bad', 'deleting': 'muted', 'reauthorization-required': 'warn'};
const HEALTH_KIND = {healthy: 'ok', expiring: 'warn', failing: 'bad', expired: 'bad', unknown: 'muted'};

/** What the page knows of the person and the service, once signed in. */
export const state = {session: null, options: [], roles: new Set()};

/** May the signed-in person act as `role` (Reader, Writer, Rotator, Auditor) for `app` (or any app)? */
export function can(role, app) {
  const roles = state.roles;
  if (roles.has('Admin') || roles.has(role)) return true;
  if (app) return roles.has(`${role}.${app}`) || roles.has(`Admin.${app}`);
  return [...roles].some((name) => name.startsWith(`${role}.`) || name.startsWith('Admin.'));
}

export function appName(id) {
  const option = state.options.find((item) => item.app === id);
  return option ? option.name : id;
}

export function statusBadge(status) {
  return badge(STATUS_KIND[status] || 'muted', STATUS_NAMES[status] || status);
}

export function healthBadge(health) {
  const status = (health && health.status) || 'unknown';
  return badge(HEALTH_KIND[status] || 'muted', HEALTH_NAMES[status] || status);
}

export function who(person) {
  return person ? person.name || person.id : '—';
}

/** Go to a view of the page; once it has its data, its heading gets the focus (so a screen reader says where). */
export function navigate(path, {replace = false} = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  return route().then(focusTitle);
}

function main() {
  return document.getElementById('main');
}

/** Show a view: its heading gets the focus, so a screen reader hears where the person is now. */
export function show(title, ...content) {
  const hadFocus = document.activeElement && document.activeElement.id === 'page-title';
  const root = clear(main());
  const heading = h('h1', {tabindex: '-1', id: 'page-title'}, title);
  root.append(heading, ...content.flat().filter(Boolean));
  document.title = `${title} · Azure App Connections`;
  if (hadFocus) heading.focus();
  return heading;
}

export function focusTitle() {
  const heading = document.getElementById('page-title');
  if (heading) heading.focus();
}

// -- session ------------------------------------------------------------------------------------------
let expiryTimer = null;
let describedAt = 0;  // when (this page's clock) the service last described the session
// The soonest the page asks again about a session the service says is live, however little time it says is left.
const RECHECK_FLOOR_MS = 30_000;
// How long before the session ends the page warns (WCAG 2.2.1: at least 20 s to act).
const WARN_BEFORE_MS = 120_000;
const clockTime = new Intl.DateTimeFormat(undefined, {timeStyle: 'short'});

function later(work, ms) {
  clearTimeout(expiryTimer);
  expiryTimer = setTimeout(work, Math.min(Math.max(ms, 0), 2 ** 31 - 1));
}

function useSession(session) {
  state.session = session;
  setSession(session);
  state.roles = new Set((session.roles || []).map((name) => String(name).replace(/^AppConnections\./, '')));
  document.getElementById('who-name').textContent = (session.user && session.user.name) || '';
  document.getElementById('who').hidden = false;
  clearTimeout(expiryTimer);
  describedAt = Date.now();
  // By the seconds the service says are left (its clock), not expiresAt against this computer's clock, which may be
  // minutes off: fast, the page would ask early, hear the session is live, and never ask again.
  const left = Number(session.expiresIn) * 1000;
  if (!Number.isFinite(left)) return;
  // No use extends the absolute expiry: when it ends the session within the warning's time of the idle expiry,
  // staying signed in would gain nothing (it would be warned again at once), and the warning says so.
  const end = {at: describedAt + left, absolute: Number(session.absoluteExpiresIn) * 1000 <= left + WARN_BEFORE_MS};
  if (left > WARN_BEFORE_MS) {
    closeSessionWarning();
    // Not warned by this description: a call of this page or of another tab may have moved the idle expiry since
    // (the service notes a use a minute or more after the last, whenever that was), and a computer that slept may
    // wake past the end. The page looks (not a use), and the fresh answer warns when the end is near.
    later(checkSession, left - WARN_BEFORE_MS);
  } else {
    warnSession(end);
    later(checkSession, Math.max(left + 1000, RECHECK_FLOOR_MS));
  }
}

async function loadSession() {
  useSession(await api('GET', '/auth/session'));
}

/** When the warning is due or the session should have lapsed, ask (a look that does not count as a use): lapsed,
 * say so (what a dialog held is wiped); still live, the answer times what comes next (useSession warns when it says
 * the end is near). A look that fails (the network) is tried again, 30 s later. */
async function checkSession() {
  let session;
  try {
    session = await api('GET', '/auth/session', undefined, {signInOn401: false});
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) ended('Your session has ended', 'It was not used for a while.');
    else later(checkSession, RECHECK_FLOOR_MS);
    return;
  }
  useSession(session);
}

/**
 * Warn that the session is about to end, in a modal alert dialog over whatever is open (an open form stays as it
 * is, what was typed in it too): "Stay signed in" posts /auth/session, a use of the session which moves the idle
 * expiry and answers its new description; the absolute expiry cannot be moved, and the warning says so. The
 * focus goes to the warning, and back where it was when the warning closes. Drawn anew while open (a new
 * description), the changed words are announced and the focus stays in the warning.
 */
function warnSession(end) {
  const dialog = document.getElementById('session-dialog');
  const text = document.getElementById('session-dialog-text');
  const error = document.getElementById('session-dialog-error');
  const actions = clear(document.getElementById('session-dialog-actions'));
  const news = document.getElementById('session-dialog-news');
  const minutes = Math.round((end.at - Date.now()) / 60_000);
  const when = `at ${clockTime.format(new Date(end.at))} (${minutes >= 1 ? `in about ${minutes} ` +
    `minute${minutes === 1 ? '' : 's'}` : 'in less than a minute'})`;
  const said = end.absolute
    ? `Your session ends ${when} and cannot be extended: a session lasts a limited time after sign-in. Finish or ` +
      'copy what you are typing, then sign in again.'
    : `Your session ends ${when}, as the page has not been used for a while (typing in a form does not count). ` +
      'Choose Stay signed in to keep it: what you typed stays.';
  // Words changed in an open warning are not read out by themselves (only its first showing is): the warning's
  // live region says them.
  if (dialog.open && text.textContent !== said) {
    news.textContent = '';
    setTimeout(() => { news.textContent = said; }, 50);
  }
  text.textContent = said;
  error.hidden = true;
  guardWhileBusy(dialog);
  if (end.absolute) {
    actions.append(h('button', {type: 'button', class: 'primary', id: 'session-dialog-ok',
      onclick: () => dialog.close()}, 'OK'));
  } else {
    const stay = h('button', {type: 'button', class: 'primary', id: 'stay-signed-in', onclick: async () => {
      stay.disabled = true;
      stay.setAttribute('aria-busy', 'true');
      try {
        await staySignedIn();
      } catch (failure) {
        error.textContent = `Staying signed in failed: ${failure.message}`;
        error.hidden = false;
      } finally {
        stay.disabled = false;
        stay.removeAttribute('aria-busy');
      }
      if (dialog.open && stay.isConnected) stay.focus();  // drawn anew meanwhile: the focus is on its action
    }}, 'Stay signed in');
    actions.append(stay, h('button', {type: 'button', onclick: () => dialog.close()}, 'Close'));
  }
  if (dialog.open) {
    // Its actions were replaced: the focus, if it was on one, went to <body>.
    if (!dialog.contains(document.activeElement)) actions.querySelector('button').focus();
    return;
  }
  news.textContent = '';
  dialog.returnTo = document.activeElement;
  dialog.showModal();
  actions.querySelector('button').focus();
}

/** POST /auth/session: a use of the session that any signed-in person may make (no role, so nothing refused),
 * which moves the idle expiry at once and answers the session's new description; that closes the warning. */
async function staySignedIn() {
  let session;
  try {
    session = await api('POST', '/auth/session', undefined, {signInOn401: false});
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      ended('Your session has ended', 'It was not used for a while.');
      return;
    }
    throw error;
  }
  useSession(session);
}

function closeSessionWarning() {
  const dialog = document.getElementById('session-dialog');
  if (dialog.open) dialog.close();
}

document.getElementById('session-dialog').addEventListener('close', (event) => {
  const back = event.target.returnTo;
  event.target.returnTo = null;
  // Back where the person was (the field they were typing in), unless that went meanwhile.
  if (back && back.isConnected && !back.closest('dialog:not([open])')) back.focus();
});

/** The page without a session. Not straight back to sign-in: Entra's own session would sign the person in again
 * without asking (a shared machine). They sign in again when they choose to; Entra may still ask for an account. */
function ended(title, text) {
  clearTimeout(expiryTimer);
  // An open dialog goes too: closing the connection dialog wipes what was typed into it (a private key, a secret),
  // which would otherwise stay on the screen of a machine its person has walked away from.
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  state.session = null;
  document.getElementById('who').hidden = true;
  // Entra ID asks which account (its own session would sign the last person in again, on a shared machine)
  const again = h('a', {href: `/auth/login?returnTo=${enc(location.pathname + location.search)}&selectAccount=true`,
    id: 'sign-in-again'}, 'Sign in');
  show(title, h('p', {}, text), h('p', {}, again));
  announce(`${title}.`);
}

async function signOut() {
  try {
    await api('POST', '/auth/logout', undefined, {signInOn401: false, anyone: true});
  } catch (error) {
    toast(`Signing out failed: ${error.message}`);
    return;
  }
  history.replaceState(null, '', BASE);
  ended('You have signed out', 'Your session here has ended.');
}

// -- the list ------------------------------------------------------------------------------------------
const filters = {app: '', status: ''};

function readFilters() {
  const params = new URLSearchParams(location.search);
  filters.app = params.get('app') || '';
  filters.status = params.get('status') || '';
}

function writeFilters() {
  const params = new URLSearchParams();
  if (filters.app) params.set('app', filters.app);
  if (filters.status) params.set('status', filters.status);
  const query = params.toString();
  history.replaceState(null, '', query ? `${BASE}?${query}` : BASE);
}

async function loadConnections(apps) {
  const results = await Promise.all(apps.map(async (option) => {
    try {
      const items = await all(`${API}/${enc(option.app)}`, 'appConnections');
      return {app: option.app, items, more: items.more};
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) return {app: option.app, items: [], forbidden: true};
      return {app: option.app, items: [], error};
    }
  }));
  return results;
}

function filterSelect(id, label, choices, value, onChange) {
  const select = h('select', {id, name: id, onchange: (event) => onChange(event.target.value)},
    choices.map(([key, text]) => h('option', {value: key, selected: key === value}, text)));
  return h('div', {class: 'field inline'}, h('label', {for: id}, label), select);
}

function connectionRow(item) {
  const rotation = item.rotation || {};
  const changed = item.updatedBy || item.createdBy;
  return h('tr', {},
    h('th', {scope: 'row'}, h('a', {href: `${BASE}/${enc(item.app)}/${enc(item.id)}`, 'data-link': ''}, item.name),
      item.description ? h('div', {class: 'sub'}, item.description) : null),
    h('td', {}, appName(item.app)),
    h('td', {}, METHOD_NAMES[item.method] || item.method),
    h('td', {}, statusBadge(item.status)),
    h('td', {}, healthBadge(item.health)),
    h('td', {}, item.isAutoRotationEnabled ? time(rotation.nextRotationAt) : h('span', {class: 'muted'}, 'Off')),
    h('td', {}, time(item.credentialExpiresAt)),
    h('td', {}, who(changed), h('div', {class: 'sub'}, time(item.updatedAt || item.createdAt))),
  );
}

export async function renderList() {
  readFilters();
  const apps = state.options.filter((option) => can('Reader', option.app));
  const addButton = state.options.some((option) => can('Writer', option.app))
    ? h('button', {type: 'button', class: 'primary', id: 'add-connection', onclick: () => openConnectionDialog()},
      'Add connection')
    : null;
  const intro = h('p', {class: 'lead'},
    'The credentials your Entra ID applications use to reach Azure Key Vault, Azure App Configuration and ' +
    'Microsoft Graph: checked, rotated and recorded.');
  const region = h('section', {'aria-labelledby': 'connections-title', 'aria-busy': 'true'},
    h('h2', {id: 'connections-title', class: 'sr-only'}, 'Connections'),
    h('p', {class: 'loading'}, 'Loading connections…'));
  show('App Connections', h('div', {class: 'toolbar'}, intro, addButton), region);
  if (!apps.length) {
    clear(region).append(h('div', {class: 'empty'}, h('p', {}, 'Your account has no role for any app.'),
      h('p', {}, 'Ask an administrator for the App Connections Reader role.')));
    region.setAttribute('aria-busy', 'false');
    return;
  }
  const results = await loadConnections(apps);
  const items = results.flatMap((result) => result.items)
    .sort((a, b) => (b.updatedAt || '').localeCompare(a.updatedAt || ''));
  const statuses = [...new Set(items.map((item) => item.status))];
  const draw = () => {
    const shown = items.filter((item) => (!filters.app || item.app === filters.app) &&
      (!filters.status || item.status === filters.status || (item.health && item.health.status) === filters.status));
    const filterBar = h('div', {class: 'filters', role: 'group', 'aria-label': 'Filter connections'},
      filterSelect('filter-app', 'App', [['', 'All apps'], ...apps.map((o) => [o.app, o.name])], filters.app,
        (value) => { filters.app = value; writeFilters(); redraw(); }),
      filterSelect('filter-status', 'Status', [['', 'Any status'],
        ...Object.entries(STATUS_NAMES).filter(([key]) => key !== 'deleting' || statuses.includes(key)),
        ...Object.entries(HEALTH_NAMES).map(([key, text]) => [key, `Health: ${text}`])], filters.status,
      (value) => { filters.status = value; writeFilters(); redraw(); }),
      h('p', {class: 'count', id: 'connection-count'},
        `${shown.length} of ${items.length}${results.some((result) => result.more) ? ' listed' : ''} connections`));
    const problems = results.filter((result) => result.error || result.forbidden || result.more).map((result) =>
      h('p', {class: 'warning'}, result.forbidden
        ? `${appName(result.app)}: your account may not read its connections (ask for the Reader role).`
        : result.more
          ? `${appName(result.app)}: only its first ${result.items.length} connections are listed here; the API ` +
            'lists them all (GET /api/v1/app-connections/{app}, page by page).'
          : `${appName(result.app)}: the connections could not be loaded (${result.error.message}).`));
    let content;
    if (!items.length) {
      content = h('div', {class: 'empty'}, h('h3', {}, 'No connections yet'),
        h('p', {}, 'A connection holds the Tenant ID, Client ID and a client secret, a certificate or an OAuth ' +
          'sign-in of an Entra ID application, for one app.'),
        addButton ? h('p', {}, 'Choose Add connection to create the first one.') : h('p', {}, 'Nobody has added one yet.'));
    } else if (!shown.length) {
      content = h('div', {class: 'empty'}, h('p', {}, 'No connection matches these filters.'),
        h('button', {type: 'button', onclick: () => { filters.app = ''; filters.status = ''; writeFilters(); redraw(); }},
          'Clear filters'));
    } else {
      content = h('div', {class: 'table-wrap'}, h('table', {class: 'connections'},
        h('caption', {class: 'sr-only'}, 'App connections'),
        h('thead', {}, h('tr', {}, ['Name', 'App', 'Method', 'Status', 'Health', 'Next rotation',
          'Credential expires', 'Changed by'].map((text) => h('th', {scope: 'col'}, text)))),
        h('tbody', {}, shown.map(connectionRow))));
    }
    return [filterBar, ...problems, content];
  };
  const redraw = () => {
    const focused = document.activeElement && document.activeElement.id;
    clear(region).append(h('h2', {id: 'connections-title', class: 'sr-only'}, 'Connections'), ...draw());
    if (focused) document.getElementById(focused)?.focus();
    announce(document.getElementById('connection-count').textContent);
  };
  redraw();
  region.setAttribute('aria-busy', 'false');
  const params = new URLSearchParams(location.search);
  if (params.get('add') === '1' && addButton) openConnectionDialog();
}

// -- routing -------------------------------------------------------------------------------------------
async function route() {
  hideToast();
  main().dataset.ready = 'false';  // 'true' once the view has its data (the browser tests wait for it)
  const path = location.pathname.replace(/\/+$/, '');
  try {
    if (path === BASE) {
      await renderList();
    } else if (path.startsWith(`${BASE}/`)) {
      const [app, id] = path.slice(BASE.length + 1).split('/').map(decodeURIComponent);
      await renderConnection(app, id);
    } else {
      show('Page not found', h('p', {}, h('a', {href: BASE, 'data-link': ''}, 'Go to App Connections')));
    }
  } catch (error) {
    show('Something went wrong', h('p', {class: 'warning'}, error.message),
      h('p', {}, h('a', {href: BASE, 'data-link': ''}, 'Back to App Connections')));
  }
  main().dataset.ready = 'true';
}

document.addEventListener('click', (event) => {
  const link = event.target.closest && event.target.closest('a[data-link]');
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute('href'));
});
window.addEventListener('popstate', () => { route().then(focusTitle); });

async function start() {
  document.getElementById('sign-out').addEventListener('click', signOut);
  try {
    await loadSession();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return goToSignIn();
    show('The page could not start', h('p', {class: 'warning'}, error.message));
    return undefined;
  }
  try {
    state.options = (await api('GET', `${API}/options`)).appConnectionOptions || [];
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 403)) toast(`The apps could not be loaded: ${error.message}`);
  }
  await route();
  const notice = new URLSearchParams(location.search).get('authorized');
  if (notice) {
    announce(notice === 'created' ? 'The connection was created.' : 'The connection was authorized again.');
  }
  return undefined;
}

start();
