// parts/tryit.js — "Try it": a JSON request body (pre-filled from the function's examples), sent to the
// function's inference path with the signed-in key; the answer's status, body, time and the fnserve
// headers are shown as text. Invalid JSON is caught here and nothing is sent.

import { h } from "../dom.js";
import { api, isAbort, raw, seg } from "../api.js";
import { num } from "../format.js";
import { note, statusLine } from "../ui.js";

const SHOWN_HEADERS = ["x-request-id", "x-fnserve-revision", "x-fnserve-cold-start", "server-timing"];

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** The try-it panel for function ``name`` (its example inputs: any key that may invoke it may read them). */
export function tryIt(name) {
  let path = "";
  let examples = [];
  const controller = new AbortController();
  const where = h("code", { "data-testid": "tryit-path" });
  const hint = h("div");
  const picker = h("select", { id: "tryit-example", "data-testid": "tryit-example" });
  const pickerRow = h("div", { class: "field", hidden: true }, h("label", { for: "tryit-example" }, "Example"), picker);
  const body = h("textarea", { id: "tryit-body", rows: 8, spellcheck: "false", "data-testid": "tryit-body",
    "aria-describedby": "tryit-error" });
  const sendButton = h("button", { type: "submit", class: "primary", "data-testid": "tryit-send" }, "Send");
  const problem = statusLine("tryit-error");
  problem.element.id = "tryit-error";
  const answerStatus = h("strong", { "data-testid": "tryit-status" });
  const answerTime = h("span", { "data-testid": "tryit-time" });
  const answerHeaders = h("dl", { class: "facts compact", "data-testid": "tryit-headers" });
  const answerBody = h("pre", { class: "answer", "data-testid": "tryit-output", tabindex: "0" });
  const answer = h("div", { class: "answer-box", "data-testid": "tryit-answer", hidden: true, "aria-live": "polite" },
    h("p", {}, answerStatus, " · ", answerTime), answerHeaders, answerBody);

  const form = h("form", { class: "tryit", novalidate: true },
    h("p", {}, "POST ", where), hint, pickerRow,
    h("div", { class: "field" }, h("label", { for: "tryit-body" }, "Request body (JSON)"), body),
    h("div", { class: "actions" }, sendButton), problem.element, answer);

  picker.addEventListener("change", () => {
    const chosen = examples[Number(picker.value)];
    if (chosen !== undefined) body.value = pretty(chosen);
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.clear();
    let text = body.value.trim();
    try {
      JSON.parse(text);
    } catch (error) {
      problem.say(`The body is not valid JSON: ${error.message}`, "error");
      body.focus();
      return;
    }
    if (!path) {
      problem.say("This function has no inference path to send to.", "error");
      return;
    }
    sendButton.disabled = true;
    const started = performance.now();
    try {
      const response = await raw(path, { body: text, signal: controller.signal });
      const received = await response.text();
      const took = performance.now() - started;
      answerStatus.textContent = `${response.status} ${response.statusText}`.trim();
      answerStatus.className = response.ok ? "ok" : "error";
      answerTime.textContent = `${num(took, 0)} ms (measured here)`;
      answerHeaders.replaceChildren(...SHOWN_HEADERS.filter((k) => response.headers.has(k)).map((k) =>
        h("div", {}, h("dt", {}, k), h("dd", { "data-header": k }, response.headers.get(k)))));
      try {
        text = pretty(JSON.parse(received));
      } catch {
        text = received;
      }
      answerBody.textContent = text;
      answer.hidden = false;
    } catch (error) {
      if (!isAbort(error)) problem.say(`The request failed: ${error.message}`, "error");
    } finally {
      sendButton.disabled = false;
    }
  });

  async function loadExample() {
    try {
      const found = await api(`/api/functions/${seg(name)}/example`, { signal: controller.signal });
      if (found.path) path = found.path;
      where.textContent = path;
      examples = found.examples;
      if (!examples.length) {
        hint.replaceChildren(note("No example request for this function (no examples.jsonl): write one.",
          "tryit-no-example"));
      }
      body.value = examples.length ? pretty(examples[0]) : "";
      picker.replaceChildren(...examples.map((example, i) => h("option", { value: String(i) },
        `Example ${i + 1}: ${JSON.stringify(example).slice(0, 60)}`)));
      pickerRow.hidden = examples.length < 2;
    } catch (error) {
      if (!isAbort(error)) hint.replaceChildren(note(`The example could not be loaded: ${error.message}`));
    }
  }

  return {
    element: form,
    /** The function summary's inference path (used until an example names one). */
    setPath(url) {
      if (!path && url) {
        path = url;
        where.textContent = url;
      }
    },
    load: loadExample,
    stop: () => controller.abort(),
  };
}
