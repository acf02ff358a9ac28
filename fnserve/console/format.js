// format.js — how numbers, durations and times read in the console: one place, so every view says
// "1,234", "12 ms" and "3 min ago" the same way, and a missing value is always "–".

export const MISSING = "–";

const missing = (v) => v === undefined || v === null || (typeof v === "number" && !Number.isFinite(v));

// Number.prototype.toLocaleString builds an Intl.NumberFormat on every call (tens of µs each: 300 ms for
// a thousand-function table); the same formatter, made once per precision, gives the same text.
const formatters = new Map();

/** 1234.5 → "1,234.5" (the browser's locale, as toLocaleString); digits: the most fraction digits shown. */
export function num(value, digits = 1) {
  if (missing(value) || typeof value !== "number") return MISSING;
  if (Number.isInteger(value) && value > -1000 && value < 1000) return String(value);  // most cells: no Intl
  let format = formatters.get(digits);
  if (!format) {
    format = new Intl.NumberFormat(undefined, { maximumFractionDigits: digits });
    formatters.set(digits, format);
  }
  return format.format(value);
}

/** Milliseconds: "12 ms", "1,234 ms". */
export function ms(value) {
  return missing(value) ? MISSING : `${num(value, value < 10 ? 1 : 0)} ms`;
}

/** A span of seconds as "850 ms", "42 s", "3 min 5 s", "2 h 10 min". */
export function duration(seconds) {
  if (missing(seconds) || typeof seconds !== "number") return MISSING;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${num(seconds, seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A time from the API (unix seconds, or an ISO string) as a Date, or null. */
export function toDate(value) {
  if (missing(value) || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** The ISO form of a time, for title attributes ("" when there is none). */
export function iso(value) {
  const date = toDate(value);
  return date ? date.toISOString() : "";
}

/** "just now", "3 min ago", "in 2 h", "5 days ago". */
export function relative(value, now = Date.now()) {
  const date = toDate(value);
  if (!date) return MISSING;
  const delta = (date.getTime() - now) / 1000;
  const size = Math.abs(delta);
  if (size < 10) return "just now";
  const [amount, unit] = size < 60 ? [size, "s"] : size < 3600 ? [size / 60, "min"]
    : size < 86400 ? [size / 3600, "h"] : [size / 86400, size < 2 * 86400 ? "day" : "days"];
  const text = `${Math.floor(amount)} ${unit}`;
  return delta < 0 ? `${text} ago` : `in ${text}`;
}

/** {a: 1, b: "x"} → "a=1, b=x" (for labels and metrics); empty → "–". */
export function pairs(object, digits = 4) {
  if (!object || typeof object !== "object") return MISSING;
  const items = Object.entries(object).map(([k, v]) => `${k}=${typeof v === "number" ? num(v, digits)
    : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)}`);
  return items.length ? items.join(", ") : MISSING;
}

/** A value that may be missing, as text. */
export function text(value) {
  return missing(value) || value === "" ? MISSING : String(value);
}

/** Today minus days, as YYYY-MM-DD (UTC, as the usage ledger's days are). */
export function daysAgo(days, now = Date.now()) {
  return new Date(now - days * 86400000).toISOString().slice(0, 10);
}
