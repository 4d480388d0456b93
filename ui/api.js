// The page's client of Duet's /v1 API: JSON in and out, problem+json errors as ApiProblem, and the API key
// (asked for when the server answers 401, kept in sessionStorage: this tab only, gone when it closes).

const KEY = "duet.api-key";

export class ApiProblem extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

let asking = null;

/** Shows the key dialog (once, however many calls are waiting) and resolves when the user has answered. */
export function askForKey(reason) {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-reason").textContent =
    reason || "This server needs an API key. It is kept for this browser tab only.";
  input.value = apiKey() || "";
  asking = new Promise((resolve) => {
    const done = (saved) => {
      asking = null;
      resolve(saved);
    };
    const form = document.getElementById("key-form");
    const onSubmit = (event) => {
      event.preventDefault();
      setApiKey(input.value.trim());
      cleanup();
      dialog.close();
      done(true);
    };
    const onCancel = () => {
      cleanup();
      dialog.close();
      done(false);
    };
    const onForget = () => {
      setApiKey(null);
      input.value = "";
      input.focus();
    };
    const cleanup = () => {
      form.removeEventListener("submit", onSubmit);
      document.getElementById("key-cancel").removeEventListener("click", onCancel);
      document.getElementById("key-forget").removeEventListener("click", onForget);
      dialog.removeEventListener("cancel", onCancel);
    };
    form.addEventListener("submit", onSubmit);
    document.getElementById("key-cancel").addEventListener("click", onCancel);
    document.getElementById("key-forget").addEventListener("click", onForget);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

async function send(method, path, body, accept) {
  const headers = { Accept: accept };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

async function problemOf(response) {
  try {
    return await response.json();
  } catch {
    return { title: response.statusText, status: response.status };
  }
}

/**
 * Calls the API; on 401 asks for a key and tries again. Resolves to the parsed JSON body (or the Response
 * itself with `raw`), with the status and headers on `meta` when asked. Throws ApiProblem otherwise.
 */
export async function api(method, path, body, { raw = false, accept = "application/json" } = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await send(method, path, body, accept);
    if (response.status === 401 && attempt < 3) {
      const problem = await problemOf(response);
      const why = apiKey() ? `The key was refused: ${problem.detail || problem.title}` : undefined;
      if (await askForKey(why)) continue;
      throw new ApiProblem(401, problem);
    }
    if (!response.ok) throw new ApiProblem(response.status, await problemOf(response));
    if (raw) return response;
    return response.status === 204 ? null : response.json();
  }
}

export const get = (path, options) => api("GET", path, undefined, options);
export const post = (path, body, options) => api("POST", path, body, options);
export const patch = (path, body, options) => api("PATCH", path, body, options);
export const del = (path, options) => api("DELETE", path, undefined, options);

/** A path segment, escaped. */
export const seg = (value) => encodeURIComponent(value);
