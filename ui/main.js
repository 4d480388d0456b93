// The page's entry: a hash router (#/compare, #/judge, #/experiments[/id], #/eval, #/models) that renders one
// view into <main>, the API-key button, and the global `/` shortcut that focuses the current view's query box.

import { askForKey, apiKey } from "./api.js";
import { clearNotice } from "./dom.js";
import { compareView } from "./compare.js";
import { judgeView } from "./judge.js";
import { experimentsView } from "./experiments.js";
import { evaluateView } from "./evaluate.js";
import { modelsView } from "./models.js";

const VIEWS = { compare: compareView, judge: judgeView, experiments: experimentsView, eval: evaluateView, models: modelsView };

let rendered = null;

function route() {
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [view, ...rest] = path.split("/");
  return { view: VIEWS[view] ? view : "compare", rest: rest.map(decodeURIComponent) };
}

async function render() {
  const { view, rest } = route();
  const key = `${view}/${rest.join("/")}`;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  // The same view with other parameters (a new query, other models) updates itself in place.
  if (rendered && rendered.key === key && rendered.update) {
    await rendered.update();
    return;
  }
  clearNotice();
  if (rendered && rendered.leave) rendered.leave();
  main.replaceChildren();
  document.title = `Duet · ${view}`;
  const handle = (await VIEWS[view](main, rest)) || {};
  rendered = { key, ...handle };
}

document.getElementById("key-button").addEventListener("click", async () => {
  if (await askForKey(apiKey() ? "Change or forget the key used for this tab." : undefined)) render();
});

document.addEventListener("keydown", (event) => {
  if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target.closest && target.closest("input, textarea, select, [contenteditable], dialog[open]")) return;
  const box = document.querySelector("[data-query-box]");
  if (box) {
    event.preventDefault();
    box.focus();
    box.select();
  }
});

document.getElementById("doc-close").addEventListener("click", () => document.getElementById("doc-dialog").close());
window.addEventListener("hashchange", render);
render();
