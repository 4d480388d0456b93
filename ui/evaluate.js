// Evaluation view: upload a pairs JSONL ({"query", "doc_id", "grade"?} per line, as `duet eval` and
// POST /v1/eval take them), pick the models and cut-offs, run POST /v1/eval (a job with a progress bar when
// the set is large), then a table of MRR@10, nDCG@10 and recall@k with their 95 % intervals and a recall@k
// plot per model.

import { get, post, del, seg } from "./api.js";
import { h, fill, ci, ms, failed, notice } from "./dom.js";
import { lineChart } from "./charts.js";

const MAX_PAIRS = 20000;

/** Parses the file's lines; returns {pairs, errors} with 1-based line numbers in the errors. */
export function parsePairs(text) {
  const pairs = [], errors = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (!line.trim()) return;
    try {
      const v = JSON.parse(line);
      if (typeof v.query !== "string" || !v.query.trim() || typeof v.doc_id !== "string" || !v.doc_id) throw new Error('needs "query" and "doc_id" strings');
      const pair = { query: v.query, doc_id: v.doc_id };
      if (v.grade !== undefined) pair.grade = Number(v.grade);
      pairs.push(pair);
    } catch (error) {
      errors.push(`line ${i + 1}: ${error.message}`);
    }
  });
  return { pairs, errors };
}

export async function evaluateView(main) {
  const file = h("input#eval-file", { type: "file", accept: ".jsonl,.json,.txt,application/jsonl", required: true });
  const models = h("fieldset.checks#eval-models", {}, h("legend", {}, "Models"));
  const ks = h("input#eval-k", { type: "text", value: "1, 10, 100", pattern: "[0-9 ,]+", style: { width: "9em" } });
  const exact = h("input#eval-exact", { type: "checkbox" });
  const run = h("button#eval-run", { type: "submit" }, "Evaluate");
  const progress = h("section#eval-progress", { "aria-live": "polite" });
  const results = h("section#eval-results");
  const form = h("form#eval-form", { "aria-label": "Evaluate on uploaded pairs" },
    h("div.row", {},
      h("div", {}, h("label", { for: "eval-file" }, "Pairs (JSONL: query, doc_id, optional grade)"), file),
      h("div", {}, h("label", { for: "eval-k" }, "recall@k cut-offs"), ks),
      h("label", { class: "inline" }, exact, " exact search"),
      run),
    models);
  fill(main, h("h1", {}, "Evaluate"),
    h("p.muted", {}, "Scores the served models on your held-out pairs, against the live indexes: each pair's document must be in the store."),
    form, progress, results);
  try {
    for (const m of (await get("/v1/models")).models) models.append(h("label", {}, h("input", { type: "checkbox", name: "model", value: m.name, checked: true }), m.name));
  } catch (error) {
    failed(error);
  }
  let job = null;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!file.files[0]) return;
    const { pairs, errors } = parsePairs(await file.files[0].text());
    if (errors.length) return notice(`The file has ${errors.length} bad line(s): ${errors.slice(0, 3).join("; ")}`);
    if (!pairs.length) return notice("The file has no pairs.");
    if (pairs.length > MAX_PAIRS) return notice(`At most ${MAX_PAIRS} pairs per evaluation; the file has ${pairs.length}.`);
    const k = ks.value.split(/[ ,]+/).filter(Boolean).map(Number);
    const chosen = [...models.querySelectorAll("input:checked")].map((b) => b.value);
    if (!chosen.length) return notice("Pick at least one model.");
    run.disabled = true;
    fill(results);
    try {
      const answer = await post("/v1/eval", { pairs, models: chosen, k, exact: exact.checked });
      const result = answer.status ? await follow(answer, progress, (j) => (job = j)) : answer;
      fill(progress);
      if (result) renderResults(results, result);
    } catch (error) {
      fill(progress);
      failed(error);
    } finally {
      run.disabled = false;
      job = null;
    }
  });
  return { leave: () => job && del(`/v1/eval/${seg(job)}`).catch(() => {}) };
}

/** Polls a job until it is done, showing its progress; resolves to its result (null when cancelled). */
async function follow(job, progress, track) {
  track(job.id);
  const bar = h("progress#eval-bar", { max: Math.max(job.total, 1), value: job.done, "aria-label": "Evaluation progress" });
  const label = h("span", {});
  let cancelled = false;
  const cancel = h("button.quiet", { type: "button", onclick: async () => { cancelled = true; await del(`/v1/eval/${seg(job.id)}`).catch(failed); } }, "Cancel");
  fill(progress, h("div.row", {}, bar, label, cancel));
  for (;;) {
    bar.max = Math.max(job.total, 1);
    bar.value = job.done;
    label.textContent = `${job.status}: ${job.done.toLocaleString()} of ${job.total.toLocaleString()} searches`;
    if (job.status === "done") return job.result;
    if (job.status === "failed") throw new Error(`The evaluation failed: ${job.error || "see the server log"}`);
    if (cancelled) return null;
    await new Promise((r) => setTimeout(r, 300));
    try {
      job = await get(`/v1/eval/${seg(job.id)}`);
    } catch (error) {
      if (cancelled) return null;
      throw error;
    }
  }
}

export function renderResults(results, r) {
  const cuts = Object.keys(r.models[0]?.recall || {}).sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
  const table = h("div.scroll", {}, h("table#eval-table", {},
    h("thead", {}, h("tr", {}, h("th", {}, "model"), h("th.num", {}, "queries"), h("th.num", {}, "MRR@10 [95 %]"), h("th.num", {}, "nDCG@10 [95 %]"),
      cuts.map((c) => h("th.num", {}, `recall${c}`)), h("th.num", {}, "p50 / p99"))),
    h("tbody", {}, r.models.map((m) => h("tr", { dataset: { model: m.model, mrr: m.mrr_at_10.value } },
      h("td", {}, m.model, h("div.muted", {}, h("code", {}, m.model_version))), h("td.num", {}, m.queries), h("td.num", {}, ci(m.mrr_at_10)), h("td.num", {}, ci(m.ndcg_at_10)),
      cuts.map((c) => h("td.num", {}, ci(m.recall[c]))), h("td.num", {}, `${ms(m.query_ms_p50)} / ${ms(m.query_ms_p99)}`))))));
  const plot = cuts.length > 1
    ? lineChart(r.models.map((m) => ({
      label: m.model,
      points: cuts.map((c) => [Number(c.slice(1)), m.recall[c].value]),
      band: cuts.map((c) => [Number(c.slice(1)), m.recall[c].ci95[0], m.recall[c].ci95[1]]),
    })), { title: "Recall at each cut-off, with 95 % intervals", logX: true, yMax: 1, xLabel: "k (log scale)", yLabel: "recall@k" })
    : null;
  fill(results, h("h2", {}, `${r.queries} queries, ${r.pairs} pairs${r.exact ? ", exact search" : ""}, ${r.seconds.toFixed(1)} s`),
    r.unknown_documents.length ? h("p", {}, `${r.unknown_documents.length} relevant ids are not in the store (their queries score 0): ${r.unknown_documents.slice(0, 10).join(", ")}${r.unknown_documents.length > 10 ? "…" : ""}`) : null,
    table, plot);
}
