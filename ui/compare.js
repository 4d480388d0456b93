// Compare view: one query against 2–4 served models (or an experiment's arms), one column per model with
// rank, score, id, snippet, metadata and latency; the same document carries the same colour mark in every
// column; rank moves against the first column (↑3, ↓1, new, and the first column's documents a column lost);
// pairwise Jaccard@k and rank-biased overlap from POST /v1/compare (the experiment report's definitions).
// The URL holds the query, models and k, so a comparison can be shared. Keys: `/` focuses the query, arrows
// move between results (↑↓ in a column, ←→ across columns), Enter opens the whole text.

import { get, post } from "./api.js";
import { h, fill, fmt, ms, failed, openDocument, markColours, routeParams, setRouteParams } from "./dom.js";

const MAX_MODELS = 4;

export async function compareView(main) {
  const form = h("form.compare-form", { role: "search", "aria-label": "Compare models" });
  const query = h("input#compare-query", { type: "search", name: "q", placeholder: "Type a query, then Enter", "data-query-box": true, autocomplete: "off", "aria-label": "Query" });
  const k = h("select#compare-k", { name: "k", "aria-label": "Results per model" }, [5, 10, 20, 50].map((n) => h("option", { value: n }, `top ${n}`)));
  const modelBox = h("fieldset.checks#compare-models", {}, h("legend", {}, "Models (2 to 4; the first picked is the baseline for rank moves)"));
  const experimentPick = h("select#compare-experiment", { "aria-label": "Or an experiment's arms" }, h("option", { value: "" }, "— or an experiment's arms —"));
  const results = h("section#compare-results", { "aria-live": "polite" });
  fill(form,
    h("div.row", {}, h("div.grow", {}, h("label", { for: "compare-query" }, "Query  (press / to focus)"), query),
      h("div", {}, h("label", { for: "compare-k" }, "Depth"), k),
      h("div", {}, h("label", { for: "compare-experiment" }, "Experiment"), experimentPick),
      h("button", { type: "submit" }, "Compare")),
    modelBox);
  fill(main, h("h1", {}, "Compare models"), form, results);

  let models = [];
  let experiments = [];
  try {
    [models, experiments] = await Promise.all([
      get("/v1/models").then((r) => r.models),
      get("/v1/experiments").then((r) => r.experiments).catch(() => []),
    ]);
  } catch (error) {
    failed(error);
  }
  for (const m of models) {
    modelBox.append(h("label", {}, h("input", { type: "checkbox", name: "model", value: m.name }), m.name, h("span.muted", {}, ` ${m.role}`)));
  }
  for (const e of experiments.filter((e) => e.status !== "archived")) {
    experimentPick.append(h("option", { value: e.id }, `${e.name} (${e.mode}, ${e.status})`));
  }
  const boxes = () => [...modelBox.querySelectorAll("input[name=model]")];
  // The models in the order they were picked: the first is the baseline the rank moves refer to.
  let order = [];
  const chosen = () => {
    const checked = boxes().filter((b) => b.checked).map((b) => b.value);
    order = [...order.filter((m) => checked.includes(m)), ...checked.filter((m) => !order.includes(m))];
    return order;
  };
  modelBox.addEventListener("change", () => {
    const full = chosen().length >= MAX_MODELS;
    for (const b of boxes()) b.disabled = full && !b.checked;
  });
  experimentPick.addEventListener("change", () => {
    const e = experiments.find((x) => x.id === experimentPick.value);
    if (!e) return;
    const arms = [...new Set(e.arms.map((a) => a.model))].slice(0, MAX_MODELS);
    for (const b of boxes()) b.checked = arms.includes(b.value);
    order = arms;
    modelBox.dispatchEvent(new Event("change"));
  });

  // The state comes from the URL; the form only writes the URL.
  function fromUrl() {
    const p = routeParams();
    query.value = p.get("q") || "";
    const wanted = (p.get("models") || "").split(",").filter(Boolean);
    const names = models.map((m) => m.name);
    const pick = wanted.length ? wanted.filter((w) => names.includes(w)) : names.slice(0, 2);
    for (const b of boxes()) b.checked = pick.includes(b.value);
    order = pick;
    modelBox.dispatchEvent(new Event("change"));
    if (p.get("k")) k.value = p.get("k");
    return { q: query.value.trim(), models: pick, k: Number(k.value) };
  }

  async function run() {
    const state = fromUrl();
    if (!state.q) {
      fill(results, h("p.muted", {}, models.length ? "Pick two to four models and type a query." : "No model is served."));
      return;
    }
    if (state.models.length < 2) {
      fill(results, h("p.muted", {}, "Pick at least two models."));
      return;
    }
    fill(results, h("p.muted", {}, "Searching…"));
    try {
      const answer = await post("/v1/compare", { query: state.q, models: state.models, k: state.k });
      renderComparison(results, answer);
    } catch (error) {
      fill(results);
      failed(error);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = { q: query.value.trim(), models: chosen().join(","), k: k.value };
    if (!setRouteParams("compare", params)) run();
  });
  results.addEventListener("keydown", moveFocus);
  await run();
  if (!query.value) query.focus();
  return { update: run };
}

/** Renders a POST /v1/compare answer: the overlap table, then the columns. */
export function renderComparison(container, answer) {
  const columns = answer.columns;
  const colours = markColours(columns.flatMap((c) => c.results.map((r) => r.id)));
  const baseline = new Map(columns[0].results.map((r, i) => [r.id, i + 1]));
  const overlap = h("table.overlap#compare-overlap", {},
    h("caption", { class: "muted", style: { textAlign: "left" } }, `Overlap of the top ${answer.k} (Jaccard@${answer.k}; rank-biased overlap, persistence 0.9, extrapolated)`),
    h("thead", {}, h("tr", {}, h("th", {}, "models"), h("th.num", {}, `Jaccard@${answer.k}`), h("th.num", {}, "RBO"), h("th.num", {}, "shared"))),
    h("tbody", {}, answer.overlaps.map((o) => {
      const a = columns.find((c) => c.model === o.a), b = columns.find((c) => c.model === o.b);
      const inB = new Set(b.results.map((r) => r.id));
      const shared = a.results.filter((r) => inB.has(r.id)).length;
      return h("tr", { dataset: { a: o.a, b: o.b, jaccard: o.jaccard, rbo: o.rbo } },
        h("td", {}, `${o.a} · ${o.b}`), h("td.num", {}, fmt(o.jaccard)), h("td.num", {}, fmt(o.rbo)), h("td.num", {}, shared));
    })));
  const grid = h("div.columns", { style: { "--cols": columns.length } });
  grid.style.setProperty("--cols", columns.length);
  columns.forEach((column, c) => {
    const here = new Set(column.results.map((r) => r.id));
    const t = column.timings_ms;
    const list = h("ol", { "aria-label": `${column.model} results` }, column.results.map((hit, i) => {
      const rank = i + 1;
      let move = null;
      if (c > 0) {
        const before = baseline.get(hit.id);
        if (before === undefined) move = h("span.move.new", { title: `not in ${columns[0].model}'s top ${answer.k}` }, "new");
        else if (before > rank) move = h("span.move.up", { title: `rank ${before} in ${columns[0].model}` }, `↑${before - rank}`);
        else if (before < rank) move = h("span.move.down", { title: `rank ${before} in ${columns[0].model}` }, `↓${rank - before}`);
        else move = h("span.move.same", { title: `same rank in ${columns[0].model}` }, "=");
      }
      const colour = colours.get(hit.id);
      return h("li.hit", { tabindex: 0, role: "button", "aria-label": `${rank}. ${hit.id}, score ${fmt(hit.score)}; Enter opens the whole text`,
        dataset: { id: hit.id, rank, mark: colour, column: c }, onclick: () => openDocument(hit.id), onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDocument(hit.id); } } },
        h("span.rank", {}, rank),
        h("span.mark", { style: { background: colour }, title: hit.id, "aria-hidden": "true" }),
        h("span.id", {}, hit.id),
        h("span.side", {}, move, " ", h("span.score", { title: "cosine similarity" }, fmt(hit.score))),
        h("span.snippet", {}, hit.snippet),
        Object.keys(hit.metadata || {}).length ? h("span.meta", {}, Object.entries(hit.metadata).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ")) : null);
    }));
    const gone = c > 0 ? columns[0].results.filter((r) => !here.has(r.id)) : [];
    grid.append(h("section.column", { dataset: { model: column.model } },
      h("header", {}, h("h2", {}, column.model),
        h("div.muted", {}, `${column.model_version} · ${column.method}${column.ef ? ` ef ${column.ef}` : ""}${column.query_truncated ? " · query cut" : ""}`),
        h("div", { class: "latency", title: `ready ${ms(t.total_ms)} after the comparison started (the models run concurrently)` },
          h("strong", {}, ms(t.encode_ms + t.search_ms + t.fetch_ms)), ` = encode ${ms(t.encode_ms)} + search ${ms(t.search_ms)} + fetch ${ms(t.fetch_ms)}`)),
      column.results.length ? list : h("p.gone", {}, "No results."),
      gone.length ? h("div.gone", { dataset: { gone: gone.map((g) => g.id).join(" ") } }, `gone from ${columns[0].model}'s list:`,
        gone.map((g) => [h("span.mark", { style: { background: colours.get(g.id) }, "aria-hidden": "true" }), g.id])) : null));
  });
  fill(container, overlap, grid);
}

/** Arrow keys between results: up/down within a column, left/right to the same rank in the next column. */
function moveFocus(event) {
  const hit = event.target.closest && event.target.closest(".hit");
  if (!hit || !["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"].includes(event.key)) return;
  event.preventDefault();
  const columns = [...document.querySelectorAll("#compare-results .column")].map((c) => [...c.querySelectorAll(".hit")]);
  const c = Number(hit.dataset.column), r = Number(hit.dataset.rank) - 1;
  let [nc, nr] = [c, r];
  if (event.key === "ArrowUp") nr = Math.max(0, r - 1);
  if (event.key === "ArrowDown") nr = r + 1;
  if (event.key === "ArrowLeft") nc = Math.max(0, c - 1);
  if (event.key === "ArrowRight") nc = Math.min(columns.length - 1, c + 1);
  const column = columns[nc] || [];
  const next = column[Math.min(nr, column.length - 1)];
  if (next) next.focus();
}
