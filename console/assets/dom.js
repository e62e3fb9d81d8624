// Building the DOM from data: elements and text nodes only (never innerHTML), and the person's own time zone.

/**
 * h('p', {class: 'x', onclick: fn}, 'text', child, ...): an element with attributes, listeners and children.
 * Strings become text nodes; null, undefined and false children are skipped; arrays are flattened.
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      element.className = value;
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(name, '');
    } else {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function clear(element) {
  element.replaceChildren();
  return element;
}

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const dateTime = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'short'});
const dateTimeLong = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'long'});

/** The browser's time zone, e.g. "Europe/Berlin". */
export function localZone() {
  return zone;
}

/** A <time> element showing an ISO time in the person's zone (the full time with its zone as a tooltip). */
export function time(iso, empty = '—') {
  if (!iso) return document.createTextNode(empty);
  const value = new Date(iso);
  if (Number.isNaN(value.getTime())) return document.createTextNode(empty);
  return h('time', {datetime: value.toISOString(), title: dateTimeLong.format(value)}, dateTime.format(value));
}

/** "in 3 days", "2 hours ago": a relative hint next to a time. */
export function relative(iso) {
  if (!iso) return '';
  const seconds = (new Date(iso).getTime() - Date.now()) / 1000;
  const format = new Intl.RelativeTimeFormat(undefined, {numeric: 'auto'});
  const units = [['day', 86400], ['hour', 3600], ['minute', 60]];
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size) return format.format(Math.round(seconds / size), unit);
  }
  return format.format(Math.round(seconds), 'second');
}

/** A coloured badge whose meaning is in its text, never in colour alone. */
export function badge(kind, text) {
  return h('span', {class: `badge badge-${kind}`}, text);
}

let statusTimer = null;

/** Say something in the polite live region (progress, outcomes). */
export function announce(message) {
  const region = document.getElementById('status');
  clearTimeout(statusTimer);
  region.textContent = '';
  // A fresh text node after a tick is read out even when the words repeat.
  statusTimer = setTimeout(() => { region.textContent = message; }, 50);
}

/** Show an error (or a notice) in the assertive toast; it stays until dismissed or replaced. */
export function toast(message, kind = 'error') {
  const element = document.getElementById('toast');
  clear(element);
  element.className = `toast toast-${kind}`;
  element.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  append(element, [h('span', {}, message),
    h('button', {type: 'button', class: 'icon', 'aria-label': 'Dismiss', onclick: () => { element.hidden = true; }}, '×')]);
  element.hidden = false;
}

/**
 * Escape does not close `dialog` while a request it started is running (something in it is `aria-busy`): the
 * request would go on unseen. Wired once per dialog.
 */
export function guardWhileBusy(dialog) {
  if (dialog.dataset.guarded) return;
  dialog.dataset.guarded = 'true';
  dialog.addEventListener('cancel', (event) => {
    if (dialog.matches('[aria-busy="true"]') || dialog.querySelector('[aria-busy="true"]')) event.preventDefault();
  });
}

export function hideToast() {
  document.getElementById('toast').hidden = true;
}
