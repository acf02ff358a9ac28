// app.js — the console's entry point: a hash router (#/functions, #/jobs/<id>, …) that mounts one view
// at a time into <main> and unmounts the previous one (stopping its polls and streams), the header's
// navigation for the signed-in key, sign-out, and where a 401 from anywhere leads (back to sign-in);
// any other failure to load who the key is (the router restarting, its database down) keeps the key and
// offers to try again.

import { h } from "./dom.js";
import { ApiError, isAbort } from "./api.js";
import { whoami } from "./auth.js";
import { apiKey, current, isAdmin, setCurrent, setUnauthorizedHandler, signOut } from "./session.js";
import * as signin from "./views/signin.js";
import * as functions from "./views/functions.js";
import * as fn from "./views/function.js";
import * as jobs from "./views/jobs.js";
import * as job from "./views/job.js";
import * as keys from "./views/keys.js";
import * as usage from "./views/usage.js";
import * as audit from "./views/audit.js";
import { statusLine } from "./ui.js";

const ROUTES = [
  { pattern: /^#\/signin$/, view: signin, open: true },
  { pattern: /^#\/functions$/, view: functions, nav: "functions" },
  { pattern: /^#\/functions\/([^/]+)$/, view: fn, nav: "functions" },
  { pattern: /^#\/jobs$/, view: jobs, nav: "jobs", admin: true },
  { pattern: /^#\/jobs\/([^/]+)$/, view: job, nav: "jobs", admin: true },
  { pattern: /^#\/keys$/, view: keys, nav: "keys", admin: true },
  { pattern: /^#\/usage$/, view: usage, nav: "usage" },
  { pattern: /^#\/audit$/, view: audit, nav: "audit", admin: true },
];

const NAV = [["functions", "Functions", false], ["jobs", "Jobs", true], ["keys", "Keys", true],
  ["usage", "Usage", false], ["audit", "Audit", true]];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");

let unmount = null;
let generation = 0;
let pendingMessage = "";
let afterSignIn = "";

function match(hash) {
  for (const route of ROUTES) {
    const found = route.pattern.exec(hash);
    if (!found) continue;
    try {
      return { route, params: found.slice(1).map(decodeURIComponent) };
    } catch {
      return null; // a malformed escape (#/functions/%E0): no such page, as an unknown route
    }
  }
  return null;
}

function renderHeader(active) {
  const signedIn = Boolean(apiKey()) && current() !== null;
  nav.replaceChildren(...(signedIn ? NAV.filter(([, , admin]) => !admin || isAdmin()).map(([id, label]) =>
    h("a", { href: `#/${id}`, "data-nav": id, "aria-current": id === active ? "page" : null }, label)) : []));
  const me = current();
  who.textContent = signedIn && me.key ? `${me.key.name ?? me.key.id}${me.admin ? " · admin" : ""}` : "";
  signOutButton.hidden = !signedIn;
}

function show(view, params, extra = {}) {
  if (unmount) {
    try {
      unmount();
    } catch (error) {
      console.debug("unmount", error);
    }
  }
  unmount = null;
  main.replaceChildren();
  main.removeAttribute("data-view");
  unmount = view.mount(main, { params, ...extra }) || null;
}

async function route() {
  const mine = ++generation;
  const hash = location.hash || "#/functions";
  const found = match(hash);
  if (!apiKey()) {
    if (!found || !found.route.open) {
      afterSignIn = found ? hash : "";
      if (location.hash !== "#/signin") {
        location.replace("#/signin");
        return;
      }
    }
  }
  if (!found) {
    location.replace("#/functions");
    return;
  }
  if (found.route.open) {
    if (apiKey() && current() !== null) {
      location.replace("#/functions");
      return;
    }
    renderHeader("");
    const message = pendingMessage;
    pendingMessage = "";
    show(found.route.view, found.params, { message, after: afterSignIn });
    main.dataset.view = "signin";
    return;
  }
  if (current() === null) {
    try {
      const me = await whoami(apiKey());
      if (mine !== generation) return;
      setCurrent(me);
    } catch (error) {
      if (mine !== generation || isAbort(error)) return;
      if (error instanceof ApiError && error.status === 401) expire(error.message);
      else unavailable(error);
      return;
    }
  }
  renderHeader(found.route.nav);
  if (found.route.admin && !isAdmin()) {
    show({ mount: (root) => root.append(h("h1", {}, "Not for this key"),
      h("p", { class: "note" }, "This page needs a key with the admin scope.")) }, []);
  } else {
    show(found.route.view, found.params);
  }
  main.dataset.view = found.route.nav;
  focusHeading();
}

function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading && document.activeElement === document.body) heading.focus({ preventScroll: true });
}

/** /api/me failed, but not with a 401 (a 503, a 500, no answer): the key stays; show why, and a retry. */
function unavailable(error) {
  show({ mount: (root) => {
    const status = statusLine();
    status.error(error);
    const retry = h("button", { type: "button", class: "primary", "data-testid": "retry" }, "Retry");
    retry.addEventListener("click", () => {
      status.say("Trying again…");
      route();
    });
    root.append(h("h1", { tabindex: "-1" }, "The router is not available"), status.element,
      h("p", { class: "note" }, "Your key is kept in this tab; try again when the router is back."), retry);
  } }, []);
  main.dataset.view = "unavailable";
  focusHeading();
}

/**
 * Forget the key and go to sign-in, showing ``message``. Once only: a second 401 while the first one's
 * sign-out is under way (two polls refused at once) finds the key gone and leaves the first reason shown.
 */
function expire(message) {
  if (!apiKey()) return;
  signOut();
  pendingMessage = message || "";
  afterSignIn = location.hash !== "#/signin" ? location.hash : afterSignIn;
  if (location.hash === "#/signin") route();
  else location.hash = "#/signin";
}

setUnauthorizedHandler((message) => expire(`Signed out: ${message}`));

signOutButton.addEventListener("click", () => {
  signOut();
  afterSignIn = "";
  pendingMessage = "You are signed out.";
  location.hash = "#/signin";
});

document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault(); // "#main" would be taken for a route
  main.focus();
});

window.addEventListener("hashchange", () => {
  route();
});
window.addEventListener("unhandledrejection", (event) => {
  if (isAbort(event.reason)) event.preventDefault(); // a fetch cut short by leaving a view: not an error
});
route();
