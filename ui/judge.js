// Blind judging: a rater types a query; the page searches under a running interleaving experiment with the
// rater as the unit, and shows the one team-draft-interleaved list without model labels or scores (scores
// differ in scale between models and would give the arms away). Marking a result as answering the query, with
// an optional grade, sends a click to POST /v1/feedback, so the experiment's report counts human preference
// with the same sign test as live traffic. Graded judgements download as a qrels.tsv for `duet eval --qrels`.

import { get, post, seg, api } from "./api.js";
import { h, fill, fmt, ci, failed, notice, openDocument, routeParams, setRouteParams } from "./dom.js";

const RATER = "duet.rater";
const GRADES = [
  [1, "somewhat"],
  [2, "answers"],
  [3, "perfect"],
];

export async function judgeView(main) {
  const pick = h("select#judge-experiment", { "aria-label": "Interleaving experiment" });
  const rater = h("input#judge-rater", { type: "text", value: localStorage.getItem(RATER) || "", placeholder: "your name", autocomplete: "username", required: true });
  const query = h("input#judge-query", { type: "search", placeholder: "Type a query, then Enter", "data-query-box": true, autocomplete: "off", required: true });
  const form = h("form", { role: "search", "aria-label": "Judge a query" },
    h("div.row", {},
      h("div", {}, h("label", { for: "judge-experiment" }, "Experiment (interleave)"), pick),
      h("div", {}, h("label", { for: "judge-rater" }, "Rater"), rater),
      h("div.grow", {}, h("label", { for: "judge-query" }, "Query"), query),
      h("button", { type: "submit" }, "Search")));
  const list = h("section#judge-results.judge-list", { "aria-live": "polite" });
  const tally = h("section#judge-tally");
  fill(main, h("h1", {}, "Blind judging"),
    h("p.muted", {}, "One list merges two models' rankings; which model found which result is hidden. Mark every result that answers the query (a grade is optional). Each mark counts for the model that contributed the result."),
    form, list, tally);

  let experiments = [];
  try {
    experiments = (await get("/v1/experiments")).experiments.filter((e) => e.mode === "interleave" && e.status !== "archived");
  } catch (error) {
    failed(error);
  }
  if (!experiments.length) {
    fill(list, h("p", {}, "No interleaving experiment yet. ", h("a", { href: "#/experiments" }, "Create one"), " with mode interleave and the two models to judge, and start it."));
  }
  for (const e of experiments) pick.append(h("option", { value: e.id, disabled: e.status !== "running" }, `${e.name}${e.status === "running" ? "" : ` (${e.status})`}`));
  const p = routeParams();
  if (p.get("experiment")) pick.value = experiments.find((e) => e.id === p.get("experiment") || e.name === p.get("experiment"))?.id || pick.value;
  if (!pick.value || pick.selectedOptions[0]?.disabled) pick.value = experiments.find((e) => e.status === "running")?.id || "";

  async function showTally() {
    if (!pick.value) return fill(tally);
    try {
      const report = await get(`/v1/experiments/${seg(pick.value)}/report`);
      const il = report.interleave;
      const [a, b] = report.experiment.arms.map((x) => x.name);
      fill(tally, h("details", {},
        h("summary", {}, `Tally so far: ${il.impressions} judged queries (reveals the arms)`),
        h("p", {}, `${a}: ${il.wins[a] ?? 0} wins · ${b}: ${il.wins[b] ?? 0} wins · ${il.ties} ties · ${il.no_click} without a mark`),
        h("p", {}, `Preference for ${b}: ${ci(il.preference_for_second)} · sign test p = ${fmt(il.sign_test_p, 4)}${il.significant ? ` · significant, ${il.preferred} preferred` : " · not significant"}`),
        h("p", {}, h("a", { href: `#/experiments/${seg(pick.value)}` }, "The whole report"), " · ",
          h("button.quiet#judge-export", { type: "button", onclick: () => downloadQrels(pick.value, report.experiment.name) }, "Download graded judgements (qrels.tsv)"))));
    } catch (error) {
      failed(error);
    }
  }

  async function run() {
    const params = routeParams();
    query.value = params.get("q") || query.value;
    const q = query.value.trim();
    if (!q || !pick.value) return;
    if (!rater.value.trim()) {
      notice("Type your name as rater first: judgements are grouped by rater.");
      rater.focus();
      return;
    }
    localStorage.setItem(RATER, rater.value.trim());
    fill(list, h("p.muted", {}, "Searching…"));
    try {
      const answer = await post("/v1/search", { query: q, k: 10, experiment: pick.value, unit_id: rater.value.trim() });
      if (!answer.experiment || !answer.experiment.logged) {
        fill(list, h("p", {}, "This search was not logged (the experiment is not running, or its queue is full), so judgements could not count. Start the experiment and try again."));
        return;
      }
      renderBlind(list, answer);
    } catch (error) {
      fill(list);
      failed(error);
    }
    showTally();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!setRouteParams("judge", { experiment: pick.value, q: query.value.trim() })) run();
  });
  pick.addEventListener("change", showTally);
  await run();
  await showTally();
  (rater.value ? query : rater).focus();
  return { update: run };
}

/** The interleaved list, without arms or scores; each row has "answers" and grade buttons. */
function renderBlind(list, answer) {
  const rows = answer.results.map((hit, i) => {
    const position = i + 1;
    const buttons = [[null, "✓ answers"], ...GRADES.map(([g, label]) => [g, `${g} ${label}`])].map(([grade, label]) =>
      h("button.quiet", { type: "button", "aria-pressed": "false", dataset: { grade: grade ?? "" }, title: grade === null ? "Answers the query (no grade)" : `Answers the query, grade ${grade}` }, label));
    const row = h("li.hit", { dataset: { id: hit.id, position } },
      h("span.rank", {}, position),
      h("span.id", { tabindex: 0, role: "button", onclick: () => openDocument(hit.id), onkeydown: (e) => { if (e.key === "Enter") openDocument(hit.id); }, title: "Open the whole text" }, hit.id),
      h("span.grades", { role: "group", "aria-label": `Judge ${hit.id}` }, buttons),
      h("span.snippet", {}, hit.snippet));
    for (const button of buttons) {
      button.addEventListener("click", async () => {
        const grade = button.dataset.grade === "" ? undefined : Number(button.dataset.grade);
        const body = { request_id: answer.request_id, doc_id: hit.id, event: "click", position };
        if (grade !== undefined) body.grade = grade;
        try {
          await post("/v1/feedback", body);
          for (const b of buttons) b.setAttribute("aria-pressed", String(b === button));
          row.classList.add("judged");
          row.dataset.judged = grade === undefined ? "yes" : String(grade);
        } catch (error) {
          failed(error);
        }
      });
    }
    return row;
  });
  fill(list, h("p.muted", {}, rows.length ? `${rows.length} results: mark each one that answers the query.` : "No results."),
    h("ol", { "aria-label": "Interleaved results" }, rows));
}

/** Fetches the experiment's graded judgements with the key and saves them as a file. */
async function downloadQrels(experiment, name) {
  try {
    const response = await api("GET", `/v1/experiments/${seg(experiment)}/judgements`, undefined, { raw: true, accept: "text/tab-separated-values" });
    const url = URL.createObjectURL(await response.blob());
    const a = h("a", { href: url, download: `${name}-qrels.tsv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    failed(error);
  }
}
