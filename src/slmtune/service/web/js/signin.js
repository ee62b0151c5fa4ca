// Sign-in: the key form, shown at start without a key and whenever the API answers 401.

import { KEY_STORE, api } from "./api.js";
import { alertBox, clear, field, h, stopTimers, view } from "./dom.js";

export function signIn(message) {
  sessionStorage.removeItem(KEY_STORE);
  stopTimers();
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", { type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const status = h("div", { "aria-live": "polite" });
  if (message) status.append(alertBox(message));
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title",
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      try {
        await api("/models");
      } catch (err) {
        sessionStorage.removeItem(KEY_STORE);
        clear(status, alertBox(err.status === 401 ? `The key was refused: ${err.message}` : err.message));
        input.focus();
        return;
      }
      if (!location.hash || location.hash === "#/") location.hash = "#/datasets";
      window.dispatchEvent(new Event("slmtune:route"));
    } },
    h("h1", { id: "signin-title", text: "Sign in" }),
    h("p", { text: "Enter an API key (slmtune keys create --project NAME). It is kept in this tab only and " +
      "sent as a header with each request." }),
    field("API key", input), status,
    h("button", { type: "submit", class: "primary", text: "Sign in" }));
  clear(view(), form);
  input.focus();
}
export async function ensureSignedIn() {
  try {
    await api("/models");
    return true;
  } catch (err) {
    if (err.status === 401) {
      signIn(sessionStorage.getItem(KEY_STORE) ? `The key was refused: ${err.message}` : null);
      return false;
    }
    throw err;
  }
}
window.addEventListener("slmtune:signin", (e) => signIn(e.detail));
