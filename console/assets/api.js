// The API seen from the page: same-origin fetches with the session cookie, the CSRF token on every change,
// problem details (RFC 9457) turned into ApiError, and a lapsed session sent back to sign-in.

let csrfToken = null;
let sessionUser = null; // the oid the page shows as signed in: a token of another person's session is not used

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `The service answered ${status}.`);
    this.status = status;
    this.problem = problem || {};
  }

  /** The field errors of the problem: [{pointer: '/credentials/tenantId', detail: 'is required'}]. */
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

/** The session the page acts in: its CSRF token and whose it is (`/auth/session`'s answer). */
export function setSession(session) {
  csrfToken = session.csrfToken;
  sessionUser = session.user ? session.user.oid : null;
}

/** Where to sign in so as to come back to this very page (a same-origin path only). */
export function signInUrl() {
  const back = location.pathname + location.search;
  return `/auth/login?returnTo=${encodeURIComponent(back.startsWith('/') && !back.startsWith('//') ? back : '/')}`;
}

export function goToSignIn() {
  location.assign(signInUrl());
  return new Promise(() => {}); // the page is leaving: nothing after this runs
}

async function body(response) {
  const type = response.headers.get('content-type') || '';
  if (!type.includes('json')) return null;
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/**
 * Call the API. A 401 anywhere means the session is gone: back to sign-in, then to this page.
 * Answers JSON (null for 204), or throws ApiError with the problem.
 *
 * A 403 for the CSRF token means the browser signed in again (another tab), so the session and its token are new:
 * the call is made once more with the new token if the session is still the same person's (`anyone`: whoever's it
 * is, as signing out the browser is). Another person's session is not acted in: the page says to reload.
 */
export async function api(method, path, payload, {signInOn401 = true, anyone = false, again = true} = {}) {
  const headers = {Accept: 'application/json'};
  // On every call: a GET that starts an OAuth sign-in changes state too, and the service asks for the token there.
  if (csrfToken) headers['X-CSRF-Token'] = csrfToken;
  const init = {method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error'};
  if (payload !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(payload);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, {title: 'The service could not be reached', detail: 'Check the connection and try again.'});
  }
  if (response.status === 401 && signInOn401) return goToSignIn();
  if (response.status === 204) return null;
  const data = await body(response);
  if (response.status === 403 && again && data && String(data.type || '').endsWith(':csrf-rejected')) {
    const session = await api('GET', '/auth/session', undefined, {signInOn401, again: false});
    if (!anyone && session.user && session.user.oid !== sessionUser) {
      throw new ApiError(403, {title: 'Signed in as someone else',
        detail: 'This browser signed in again as another person; reload the page.'});
    }
    setSession(session);
    return api(method, path, payload, {signInOn401, anyone, again: false});
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

/** Every page of a list: follows continuationToken, up to `limit` pages; `more` on the result says whether the
 * list went on past them (so that the page can say it shows only the first ones). */
export async function all(path, key, limit = 20) {
  const items = [];
  let token = null;
  for (let page = 0; page < limit; page += 1) {
    const separator = path.includes('?') ? '&' : '?';
    const url = token ? `${path}${separator}continuationToken=${encodeURIComponent(token)}` : path;
    const data = await api('GET', url);
    items.push(...(data[key] || []));
    token = data.continuationToken;
    if (!token) break;
  }
  items.more = Boolean(token);
  return items;
}

export const enc = encodeURIComponent;
