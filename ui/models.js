// Models view: every served model with its kind, role, version, dimension, documents, index parameters and
// life-cycle state (GET /v1/models), and per model its serving, candidate and previous versions with the
// back-fill progress of a version being prepared (GET /v1/models/{name}). Refreshes itself while a model is
// changing.

import { get, seg } from "./api.js";
import { h, fill, failed } from "./dom.js";

export async function modelsView(main) {
  const table = h("section#models-table");
  fill(main, h("h1", {}, "Models"), table);
  let timer = null;
  async function load() {
    clearTimeout(timer);
    try {
      const list = await get("/v1/models");
      const details = await Promise.all(list.models.map((m) => get(`/v1/models/${seg(m.name)}`).catch(() => null)));
      render(table, list, details);
      if (list.models.some((m) => m.state !== "ready" && m.state !== "failed")) timer = setTimeout(load, 1000);
    } catch (error) {
      failed(error);
    }
  }
  await load();
  return { update: load, leave: () => clearTimeout(timer) };
}

function backfill(detail) {
  const v = detail && detail.candidate && detail.candidate.backfill;
  if (!v) return null;
  return h("div", {}, h("progress", { max: Math.max(v.total, 1), value: v.done, "aria-label": `${detail.name} back-fill` }),
    h("div.muted", {}, `${v.done.toLocaleString()} / ${v.total.toLocaleString()}${v.eta_seconds ? `, ${Math.ceil(v.eta_seconds)} s left` : ""}`));
}

function render(table, list, details) {
  fill(table, h("div.scroll", {}, h("table", {},
    h("thead", {}, h("tr", {}, ["name", "kind", "role", "version", "dim", "documents", "index", "state", "versions"].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.models.map((m, i) => {
      const d = details[i];
      const ix = m.index;
      return h("tr", { dataset: { model: m.name } },
        h("td", {}, m.name, m.name === list.default_model ? h("span.muted", {}, " (default)") : null),
        h("td", {}, m.kind), h("td", {}, m.role), h("td", {}, h("code", {}, m.version)),
        h("td.num", {}, m.dimension === m.network_dimension ? m.dimension : `${m.dimension} of ${m.network_dimension}`),
        h("td.num", {}, m.documents.toLocaleString()),
        h("td", {}, `${ix.backend}, ${ix.precision}, M ${ix.m}, ef_c ${ix.ef_construction}, ef ${ix.ef_search}, exact below ${ix.exact_below}`),
        h("td", {}, h("span", { class: `badge ${m.state}` }, m.state), m.changing_to ? h("div.muted", {}, `→ ${m.changing_to}`) : null, d && d.status && d.status.reason ? h("div.muted", {}, d.status.reason) : null, backfill(d)),
        h("td", {}, d ? [["serving", d.serving], ["candidate", d.candidate], ["previous", d.previous]].filter(([, v]) => v).map(([k, v]) => h("div", {}, `${k}: `, h("code", {}, v.version), ` ${v.state}${v.reason && v.state !== "ready" ? ` (${v.reason})` : ""}`)) : "–"));
    })))));
}
