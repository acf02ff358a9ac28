// session.js — who is signed in. The API key lives in sessionStorage only (gone when the tab closes,
// never a cookie, never in the URL, never localStorage); what /api/me said about it is kept in memory.

const STORAGE = "fnserve.apiKey";

let me = null;
let onUnauthorized = () => {};

export function apiKey() {
  try {
    return sessionStorage.getItem(STORAGE) || "";
  } catch {
    return "";
  }
}

/** Remember the key and what the router said about it (the /api/me answer, or what stood in for it). */
export function signIn(key, about) {
  sessionStorage.setItem(STORAGE, key);
  setCurrent(about);
}

export function signOut() {
  sessionStorage.removeItem(STORAGE);
  me = null;
}

/** The /api/me answer for the signed-in key (null until loaded). */
export function current() {
  return me;
}

let meAt = 0;

export function setCurrent(about) {
  me = about;
  meAt = performance.now();
}

/** The functions of the /api/me answer when it came within ``ms`` (a view's first render needs no second
 * request for them: the same brief list), else null. */
export function freshFunctions(ms = 2000) {
  return me && Array.isArray(me.functions) && performance.now() - meAt < ms ? me.functions : null;
}

export function isAdmin() {
  return Boolean(me && me.admin);
}

/** app.js decides what a 401 does (back to sign-in with the message); api.js calls it. */
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export function unauthorized(message) {
  onUnauthorized(message);
}
