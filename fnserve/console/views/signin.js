// views/signin.js — #/signin: one password field for the API key, checked with GET /api/me before it is
// kept (in sessionStorage only). A message from a 401 elsewhere is shown here.

import { h } from "../dom.js";
import { whoami } from "../auth.js";
import { isAbort, ApiError } from "../api.js";
import { signIn } from "../session.js";
import { statusLine } from "../ui.js";

export function mount(root, { message, after }) {
  const controller = new AbortController();
  const input = h("input", { id: "api-key", name: "api-key", type: "password", required: true,
    autocomplete: "off", spellcheck: "false", "data-testid": "api-key", "aria-describedby": "signin-status" });
  const button = h("button", { type: "submit", class: "primary", "data-testid": "signin" }, "Sign in");
  const status = statusLine("signin-error");
  status.element.id = "signin-status";
  if (message) status.say(message, "error");

  const form = h("form", { class: "signin panel", method: "post", action: "#", novalidate: true },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Use an fnserve API key. It is kept in this tab only, until you sign out or close it."),
    h("label", { for: "api-key" }, "API key"),
    input, button, status.element);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) {
      status.say("Enter an API key.", "error");
      input.focus();
      return;
    }
    button.disabled = true;
    status.say("Checking…");
    try {
      const me = await whoami(key, { signal: controller.signal });
      input.value = "";
      signIn(key, me);
      location.hash = after && after !== "#/signin" ? after : "#/functions";
    } catch (error) {
      if (isAbort(error)) return;
      const text = error instanceof ApiError && error.status === 401
        ? `That key was not accepted: ${error.message}` : error.message;
      status.say(text, "error");
      input.select();
      input.focus();
    } finally {
      button.disabled = false;
    }
  });

  root.appendChild(form);
  input.focus();
  return () => controller.abort();
}
