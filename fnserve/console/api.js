// api.js — every call the console makes to the router goes through here, so that each one carries the
// key as "Authorization: Bearer", errors become one ApiError shape (the router's "error" text and
// "problems"), a 401 anywhere sends the user back to sign-in, and aborted calls are easy to ignore.

import { apiKey, unauthorized } from "./session.js";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
    this.problems = body && Array.isArray(body.problems) ? body.problems : [];
  }
}

/** True for the error an AbortController's abort() makes a fetch throw (leaving a view does that). */
export function isAbort(error) {
  return Boolean(error) && (error.name === "AbortError" || (error.cause && error.cause.name === "AbortError"));
}

function headersFor(key, body) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return headers;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const message = body && typeof body.error === "string" ? body.error
    : `${response.status} ${response.statusText || "error"}`;
  return new ApiError(response.status, message, body);
}

/**
 * A raw fetch with the key header. Options: method, body (sent as JSON), signal, key (instead of the
 * session's), quiet401 (do not sign out on 401: sign-in checks a key this way). Answers the Response
 * when it is 2xx, else throws ApiError.
 */
export async function send(path, { method = "GET", body, signal, key, quiet401 = false } = {}) {
  const response = await fetch(path, {
    method, signal, cache: "no-store", credentials: "omit",
    headers: headersFor(key === undefined ? apiKey() : key, body),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !quiet401) unauthorized(error.message);
    throw error;
  }
  return response;
}

/**
 * A call whose answer is shown whatever its status (the try-it panel): the Response, 4xx and 5xx
 * included; only a 401 still signs out. ``body`` is sent as given (already JSON text).
 */
export async function raw(path, { method = "POST", body, signal } = {}) {
  const headers = headersFor(apiKey(), body === undefined ? undefined : body);
  headers.Accept = "application/json, text/plain;q=0.9, */*;q=0.5";
  const response = await fetch(path, { method, signal, body, headers, cache: "no-store", credentials: "omit" });
  if (response.status === 401) {
    const error = await errorOf(response.clone());
    unauthorized(error.message);
  }
  return response;
}

/** A JSON call: the decoded answer (null for an empty one). */
export async function api(path, options = {}) {
  const response = await send(path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/**
 * A streamed text answer (a log): onText(chunk) for each decoded piece as it arrives. Resolves when the
 * stream ends; rejects with the abort error when signal aborts (callers ignore it with isAbort).
 */
export async function stream(path, { signal, onText }) {
  const response = await send(path, { signal });
  if (!response.body) {
    onText(await response.text());
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const text = decoder.decode(value, { stream: true });
    if (text) onText(text);
  }
  const rest = decoder.decode();
  if (rest) onText(rest);
}

/** A path segment from user data, escaped for a URL. */
export const seg = (value) => encodeURIComponent(String(value));
