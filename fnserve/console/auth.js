// auth.js — checking a key and finding out what it may do: GET /api/me, the one /api/ path any valid key
// opens, says who the key is, whether it is an admin key, and what it may call.

import { api } from "./api.js";

/** What the router says about ``key``: the /api/me answer ({key, admin, functions, quota, usage}). */
export function whoami(key, { signal } = {}) {
  return api("/api/me", { key, signal, quiet401: true });
}
