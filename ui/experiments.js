// Experiments view: the list, a form to create one (mode, arms from the served models, weights, default,
// start now), and one experiment's page: its life-cycle actions (start, pause, stop, archive, promote the
// winner) and its report as charts — CTR with 95 % intervals per arm and the comparisons (ab), wins, ties and
// losses over time and the preference with its sign test (interleave), overlap and latency (shadow), and the
// progress towards the sample size the report says is needed.

import { get, post, patch, seg } from "./api.js";
import { h, fill, fmt, ci, pct, ms, failed, notice } from "./dom.js";
import { intervalChart, lineChart, progressTo } from "./charts.js";

export async function experimentsView(main, rest) {
  if (rest[0]) return experimentPage(main, rest[0]);
  const list = h("section#experiment-list");
  const create = h("section#experiment-create");
  fill(main, h("h1", {}, "Experiments"), list, create);
  let models = [];
  try {
    const [experiments, served] = await Promise.all([get("/v1/experiments"), get("/v1/models")]);
    models = served.models.map((m) => m.name);
    renderList(list, experiments.experiments);
  } catch (error) {
    failed(error);
  }
  renderCreate(create, models);
}

function renderList(list, experiments) {
  if (!experiments.length) return fill(list, h("p.muted", {}, "No experiment yet."));
  fill(list, h("div.scroll", {}, h("table", {},
    h("thead", {}, h("tr", {}, ["name", "mode", "status", "arms", "default", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, [...experiments].reverse().map((e) => h("tr", { dataset: { experiment: e.name } },
      h("td", {}, h("a", { href: `#/experiments/${seg(e.id)}` }, e.name)),
      h("td", {}, e.mode),
      h("td", {}, h("span", { class: `badge ${e.status}` }, e.status)),
      h("td", {}, e.arms.map((a) => (a.name === a.model ? a.name : `${a.name} (${a.model})`) + (e.mode === "ab" ? ` ×${a.weight}` : "")).join(", ")),
      h("td", {}, e.default ? "yes" : ""),
      h("td", {}, new Date(e.created_at).toLocaleString())))))));
}

function renderCreate(section, models) {
  const name = h("input#new-name", { type: "text", required: true, pattern: "[A-Za-z0-9._\\-]{1,64}", placeholder: "ranker-v2" });
  const mode = h("select#new-mode", {}, ["interleave", "ab", "shadow"].map((m) => h("option", { value: m }, m)));
  const arms = h("div#new-arms");
  const addArm = h("button.quiet", { type: "button" }, "+ arm");
  const isDefault = h("input#new-default", { type: "checkbox" });
  const start = h("input#new-start", { type: "checkbox", checked: true });
  const armRow = (i) => {
    const select = h("select", { name: "arm-model", "aria-label": `Arm ${i + 1} model` }, models.map((m) => h("option", { value: m }, m)));
    select.value = models[Math.min(i, models.length - 1)] || "";
    const weight = h("input", { type: "number", name: "arm-weight", min: "0.001", step: "any", value: 1, "aria-label": `Arm ${i + 1} weight`, style: { width: "6em" } });
    return h("div.row", { dataset: { arm: i } }, h("span", {}, i === 0 ? "control" : `arm ${i + 1}`), select, h("label", { class: "weight" }, "weight ", weight));
  };
  const syncArms = () => {
    const ab = mode.value === "ab";
    while (arms.children.length < 2) arms.append(armRow(arms.children.length));
    while (!ab && arms.children.length > 2) arms.lastChild.remove();
    addArm.hidden = !ab || arms.children.length >= 8;
    for (const w of arms.querySelectorAll(".weight")) w.hidden = !ab;
  };
  addArm.addEventListener("click", () => { arms.append(armRow(arms.children.length)); syncArms(); });
  mode.addEventListener("change", syncArms);
  syncArms();
  const form = h("form#new-experiment", { "aria-label": "Create an experiment" },
    h("div.row", {},
      h("div", {}, h("label", { for: "new-name" }, "Name"), name),
      h("div", {}, h("label", { for: "new-mode" }, "Mode"), mode)),
    h("fieldset", {}, h("legend", {}, "Arms (control first)"), arms, addArm),
    h("div.row", {},
      h("label", { class: "inline" }, start, " start now"),
      h("label", { class: "inline" }, isDefault, " default experiment (searches with a unit id and no model go through it)"),
      h("button", { type: "submit" }, "Create")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      name: name.value.trim(),
      mode: mode.value,
      arms: [...arms.children].map((row) => {
        const arm = { model: row.querySelector("[name=arm-model]").value };
        if (mode.value === "ab") arm.weight = Number(row.querySelector("[name=arm-weight]").value);
        return arm;
      }),
      default: isDefault.checked,
      status: start.checked ? "running" : "draft",
    };
    // One model in two arms needs arm names.
    const seen = new Map();
    for (const arm of body.arms) {
      const n = (seen.get(arm.model) || 0) + 1;
      seen.set(arm.model, n);
      if (n > 1) arm.name = `${arm.model}-${n}`;
    }
    try {
      const created = await post("/v1/experiments", body);
      notice(`Experiment ${created.name} created (${created.status}).`, "info");
      location.hash = `#/experiments/${seg(created.id)}`;
    } catch (error) {
      failed(error);
    }
  });
  fill(section, h("h2", {}, "New experiment"), models.length < 2 ? h("p.muted", {}, "An experiment needs at least two served models.") : form);
}

/** The transitions a status allows, as (label, patch) pairs. */
function actions(e) {
  const out = [];
  if (e.status === "draft" || e.status === "paused") out.push([e.status === "draft" ? "Start" : "Resume", { status: "running" }]);
  if (e.status === "running") out.push(["Pause", { status: "paused" }]);
  if (["draft", "running", "paused"].includes(e.status)) out.push(["Stop", { status: "stopped" }]);
  if (e.status === "stopped") out.push(["Archive", { status: "archived" }]);
  if (e.status !== "archived") out.push([e.default ? "Unset default" : "Make default", { default: !e.default }]);
  return out;
}

async function experimentPage(main, id) {
  const head = h("section#experiment-head");
  const body = h("section#experiment-report", { "aria-live": "polite" });
  fill(main, h("p", {}, h("a", { href: "#/experiments" }, "← Experiments")), head, body);
  async function load() {
    try {
      const report = await get(`/v1/experiments/${seg(id)}/report`);
      renderHead(head, report.experiment, load);
      renderReport(body, report);
    } catch (error) {
      failed(error);
    }
  }
  await load();
  return { update: load };
}

function renderHead(head, e, reload) {
  const act = async (change) => {
    try {
      await patch(`/v1/experiments/${seg(e.id)}`, change);
      await reload();
    } catch (error) {
      failed(error);
    }
  };
  const promote = e.status === "stopped" && !e.promotion
    ? h("span", {}, h("label", { for: "promote-arm", class: "inline" }, "winner "),
      h("select#promote-arm", {}, [...new Set(e.arms.map((a) => a.model))].map((m) => h("option", { value: m }, m))),
      " ", h("button", { type: "button", onclick: () => act({ promote: document.getElementById("promote-arm").value }) }, "Promote to default model"))
    : null;
  fill(head,
    h("h1", {}, e.name, " ", h("span", { class: `badge ${e.status}`, id: "experiment-status" }, e.status)),
    h("p.muted", {}, `${e.mode} · arms ${e.arms.map((a) => `${a.name} → ${a.model}${e.mode === "ab" ? ` ×${a.weight}` : ""}`).join(", ")}${e.default ? " · default experiment" : ""}`,
      e.started_at ? ` · started ${new Date(e.started_at).toLocaleString()}` : "", e.stopped_at ? ` · stopped ${new Date(e.stopped_at).toLocaleString()}` : ""),
    e.promotion ? h("p", {}, `Promoted ${e.promotion.model} (version ${e.promotion.version}) on ${new Date(e.promotion.promoted_at).toLocaleString()}.`) : null,
    h("div.row#experiment-actions", {}, actions(e).map(([label, change]) => h("button", { type: "button", class: label === "Stop" || label === "Pause" ? "quiet" : "", onclick: () => act(change) }, label)),
      promote, h("button.quiet", { type: "button", onclick: reload }, "Refresh"),
      e.mode === "interleave" ? h("a", { href: `#/judge?experiment=${seg(e.id)}` }, "Judge blind") : null));
}

function outcomesTable(rows) {
  return h("div.scroll", {}, h("table", {},
    h("thead", {}, h("tr", {}, ["", "impressions", "CTR [95 %]", "conversion", "MRR first click", "latency p50 / p99"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map(([label, o]) => h("tr", {},
      h("td", {}, label), h("td.num", {}, o.impressions), h("td.num", {}, ci(o.ctr)), h("td.num", {}, ci(o.conversion_rate)),
      h("td.num", {}, ci(o.mrr_first_click)), h("td.num", {}, `${ms(o.latency_ms.p50)} / ${ms(o.latency_ms.p99)}`))))));
}

export function renderReport(body, report) {
  const e = report.experiment;
  const parts = [h("p.muted", {}, `Report at ${new Date(report.generated_at).toLocaleString()} · α = ${report.alpha}, power ${report.power}`)];
  if (e.mode === "ab") {
    parts.push(h("h2", {}, "Click-through rate per arm (95 % Wilson interval)"),
      intervalChart(report.arms.map((a) => ({ label: a.name, ...a.ctr })), { title: "CTR per arm with 95 % intervals" }),
      outcomesTable(report.arms.map((a) => [a.name, a])));
    for (const c of report.comparisons || []) {
      const smaller = Math.min(...report.arms.filter((a) => a.name === c.control || a.name === c.treatment).map((a) => a.impressions));
      parts.push(h("h3", {}, `${c.treatment} against ${c.control}`),
        h("p", { dataset: { comparison: c.treatment } }, `CTR difference ${fmt(c.ctr_difference)} · z = ${fmt(c.z, 2)} · p = ${fmt(c.p_value, 4)} · ${c.significant ? "significant" : "not significant"}`),
        progressTo(`Impressions per arm towards the sample size for a ${pct(report.mde)} relative change`, smaller, c.needed_per_arm));
    }
  } else if (e.mode === "interleave") {
    const il = report.interleave;
    const [a, b] = e.arms.map((x) => x.name);
    const decided = (il.wins[a] || 0) + (il.wins[b] || 0);
    parts.push(h("div.cards", {},
      h("div.card", { id: "interleave-wins" }, h("div.muted", {}, "wins"), h("div.big", {}, `${a} ${il.wins[a] || 0} · ${b} ${il.wins[b] || 0}`), h("div.muted", {}, `${il.ties} ties · ${il.no_click} without a click · ${il.impressions} impressions`)),
      h("div.card", {}, h("div.muted", {}, `preference for ${b}`), h("div.big", {}, decided ? ci(il.preference_for_second) : "–"), decided ? null : h("div.muted", {}, "no decided impression yet"), h("div.muted", {}, `sign test p = ${fmt(il.sign_test_p, 4)}`)),
      h("div.card", {}, h("div.muted", {}, "verdict"), h("div.big", {}, il.significant ? `${il.preferred} preferred` : "no preference yet"))),
      h("h2", {}, "Wins, ties and losses over time (cumulative)"), timelineChart(il.timeline || [], a, b),
      progressTo(`Decided impressions towards the ${il.needed_decided.toLocaleString()} needed to detect a ${pct(report.min_preference)} preference`, decided, il.needed_decided),
      h("h2", {}, "The merged list's outcomes"), outcomesTable([["interleaved", il]]));
  } else if (e.mode === "shadow") {
    const s = report.shadow;
    parts.push(h("h2", {}, `Shadow overlap (${s.compared} compared searches)`),
      intervalChart([{ label: "Jaccard", ...s.jaccard }, { label: "RBO", ...s.rbo }], { title: "Overlap of the shadow arm with the served arm", max: 1 }),
      h("p", {}, `Latency p50 / p99: served ${ms(s.primary_latency_ms.p50)} / ${ms(s.primary_latency_ms.p99)} · shadow ${ms(s.shadow_latency_ms.p50)} / ${ms(s.shadow_latency_ms.p99)}`),
      outcomesTable(report.arms.map((x) => [x.name, x])));
  }
  fill(body, parts);
}

/** Cumulative wins of each arm and ties over the report's time buckets. */
function timelineChart(timeline, a, b) {
  if (!timeline.length) return h("p.muted", {}, "No interleaved impression yet.");
  let wa = 0, wb = 0, ties = 0;
  const points = timeline.map((t) => {
    wa += t.wins[a] || 0;
    wb += t.wins[b] || 0;
    ties += t.ties;
    return [Date.parse(t.end), wa, wb, ties];
  });
  if (points.length === 1) points.unshift([Date.parse(timeline[0].start) - 1000, 0, 0, 0]);
  return lineChart([
    { label: `${a} wins`, points: points.map((p) => [p[0], p[1]]) },
    { label: `${b} wins (${a}'s losses)`, points: points.map((p) => [p[0], p[2]]) },
    { label: "ties", points: points.map((p) => [p[0], p[3]]), colour: "#555b62" },
  ], { title: "Cumulative interleaving wins, losses and ties over time", time: true, yLabel: "impressions", digits: 0 });
}
