//! The browser UI at `/ui`, driven in a real headless Chromium (tests/common/browser.rs) against a real server
//! with the tiny models: the compare view renders every chosen model's results in the server's order with
//! matching marks and overlaps, blind judging is counted by the experiment's report, an experiment created and
//! started from the form routes searches, an evaluation upload shows its table, the models view lists the
//! models, and a keyed server gets its key from the page's dialog. Each view's screenshot is saved.

mod common;

use std::collections::{HashMap, HashSet};

use common::browser::Browser;
use common::{sample_corpus, tiny_config, TestServer};
use duet::experiment::stats::{jaccard_at, rbo};
use serde_json::{json, Value};

async fn server_with_corpus(dir: &std::path::Path) -> TestServer {
    let server = TestServer::start(tiny_config(&dir.join("duet.db"))).await;
    let (status, body) = server.post("/v1/documents", &json!({ "documents": sample_corpus() })).await;
    assert_eq!(status, 200, "{body}");
    server
}

fn ids(results: &Value) -> Vec<String> {
    results.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// The ids of each column on the page, in the order shown, by model.
async fn columns(browser: &Browser) -> Vec<(String, Vec<String>)> {
    let value = browser
        .js(
            "return [...document.querySelectorAll('#compare-results .column')].map(c => [c.dataset.model, \
             [...c.querySelectorAll('.hit')].map(h => h.dataset.id)])",
            vec![],
        )
        .await;
    serde_json::from_value(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compare_view_shows_each_models_results_in_the_servers_order_with_matching_marks() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_corpus(dir.path()).await;
    let browser = Browser::start(1280, 900).await;
    let models = ["tiny-two-tower", "tiny-encoder", "tiny-llm"];
    let query = "read a file line by line";
    browser
        .goto(&server.url(&format!("/ui#/compare?q={}&models={}&k=5", query.replace(' ', "+"), models.join(","))))
        .await;
    browser
        .until("three result columns", "document.querySelectorAll('#compare-results .column .hit').length >= 3")
        .await;

    // Every column is the model's own ranking, as /v1/search gives it, in the order the models were picked.
    let shown = columns(&browser).await;
    assert_eq!(shown.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), models);
    let mut expected = HashMap::new();
    for model in models {
        let found = common::search(&server, json!({"query": query, "model": model, "k": 5})).await;
        expected.insert(model.to_string(), ids(&found["results"]));
    }
    for (model, list) in &shown {
        assert_eq!(list.len(), 5, "{model}");
        assert_eq!(list, &expected[model], "{model}'s column is its ranking");
    }

    // The same document has the same mark everywhere, and two documents never share one.
    let marks: Vec<(String, String, String)> = serde_json::from_value(
        browser
            .js(
                "return [...document.querySelectorAll('#compare-results .hit')].map(h => [h.dataset.id, \
                 h.dataset.mark, getComputedStyle(h.querySelector('.mark')).backgroundColor])",
                vec![],
            )
            .await,
    )
    .unwrap();
    let mut colour_of: HashMap<String, String> = HashMap::new();
    for (id, mark, painted) in &marks {
        let seen = colour_of.entry(id.clone()).or_insert_with(|| painted.clone());
        assert_eq!(seen, painted, "{id} is painted the same in every column ({mark})");
    }
    let distinct: HashSet<&String> = colour_of.values().collect();
    assert_eq!(distinct.len(), colour_of.len(), "one colour per document: {colour_of:?}");

    // The overlap table: Jaccard@k and RBO of each pair, as the experiment report defines them, from the ids.
    let overlaps: Vec<(String, String, f64, f64)> = serde_json::from_value(
        browser
            .js(
                "return [...document.querySelectorAll('#compare-overlap tbody tr')].map(r => [r.dataset.a, \
                 r.dataset.b, Number(r.dataset.jaccard), Number(r.dataset.rbo)])",
                vec![],
            )
            .await,
    )
    .unwrap();
    assert_eq!(overlaps.len(), 3, "one row per pair of models");
    for (a, b, jaccard, overlap) in overlaps {
        assert!((jaccard - jaccard_at(&expected[&a], &expected[&b], 5)).abs() < 1e-9, "{a}/{b} Jaccard");
        assert!((overlap - rbo(&expected[&a], &expected[&b], 0.9)).abs() < 1e-9, "{a}/{b} RBO");
    }

    // Rank moves against the first column.
    let moves: Vec<(String, usize, String)> = serde_json::from_value(
        browser
            .js(
                "return [...document.querySelectorAll('#compare-results .column:nth-child(2) .hit')].map(h => \
                 [h.dataset.id, Number(h.dataset.rank), h.querySelector('.move').textContent])",
                vec![],
            )
            .await,
    )
    .unwrap();
    let first = &expected["tiny-two-tower"];
    for (id, rank, shown) in moves {
        let want = match first.iter().position(|x| *x == id).map(|i| i + 1) {
            None => "new".to_string(),
            Some(before) if before > rank => format!("↑{}", before - rank),
            Some(before) if before < rank => format!("↓{}", rank - before),
            Some(_) => "=".to_string(),
        };
        assert_eq!(shown, want, "{id} at {rank}");
    }
    let gone: String = serde_json::from_value(
        browser.js("return document.querySelector('.column:nth-child(2) .gone')?.dataset.gone || ''", vec![]).await,
    )
    .unwrap();
    let lost: Vec<&String> = first.iter().filter(|id| !expected["tiny-encoder"].contains(id)).collect();
    assert_eq!(gone.split_whitespace().collect::<Vec<_>>(), lost, "the first column's documents the second lost");
    browser.screenshot("compare").await;

    // Keyboard: arrows move between results, Enter opens the whole text.
    let first_hit = browser.find("#compare-results .column .hit").await;
    first_hit.click().await.unwrap();
    browser.until("the document dialog", "document.getElementById('doc-dialog').open").await;
    let close = browser.find("#doc-close").await;
    close.click().await.unwrap();
    browser.js("document.querySelector('#compare-results .column .hit').focus()", vec![]).await;
    let arrow = |key: &str| {
        format!("document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {{key: '{key}', bubbles: true}}))")
    };
    browser.js(&arrow("ArrowDown"), vec![]).await;
    browser.js(&arrow("ArrowRight"), vec![]).await;
    let active: Vec<String> = serde_json::from_value(
        browser.js("return [document.activeElement.dataset.column, document.activeElement.dataset.rank]", vec![]).await,
    )
    .unwrap();
    assert_eq!(active, ["1", "2"], "down then right: rank 2 of the second column");
    let active = browser.client.active_element().await.unwrap();
    active.send_keys(&char::from(fantoccini::key::Key::Enter).to_string()).await.unwrap();
    browser.until("the document dialog", "document.getElementById('doc-dialog').open").await;
    let text: String =
        serde_json::from_value(browser.js("return document.getElementById('doc-text').textContent", vec![]).await)
            .unwrap();
    let id = &expected["tiny-encoder"][1];
    let doc = sample_corpus().into_iter().find(|d| d["id"] == id.as_str()).unwrap();
    assert_eq!(text, doc["text"].as_str().unwrap(), "the dialog shows the whole text");
    browser.screenshot("compare-document").await;
    browser.js("document.getElementById('doc-dialog').close()", vec![]).await;

    // `/` focuses the query; a new query updates the URL, so the comparison can be shared.
    browser.js("document.body.dispatchEvent(new KeyboardEvent('keydown', {key: '/', bubbles: true}))", vec![]).await;
    let focused = browser.js("return document.activeElement.id", vec![]).await;
    assert_eq!(focused, "compare-query");
    let input = browser.find("#compare-query").await;
    input.clear().await.unwrap();
    input.send_keys(&format!("compress a directory{}", char::from(fantoccini::key::Key::Enter))).await.unwrap();
    browser.until("the new query in the URL", "location.hash.includes('q=compress+a+directory')").await;
    let want = ids(&common::search(&server, json!({"query": "compress a directory", "model": "tiny-encoder", "k": 5}))
        .await["results"]);
    browser
        .until(
            "the new query's results",
            &format!("document.querySelector('.column:nth-child(2) .hit')?.dataset.id === {}", json!(want[0])),
        )
        .await;

    // At phone width the columns stack and nothing needs horizontal scrolling.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser
        .until("no horizontal overflow", "document.documentElement.scrollWidth <= document.documentElement.clientWidth")
        .await;
    browser.screenshot("compare-phone").await;
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_made_in_the_form_routes_searches_and_blind_judgements_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_corpus(dir.path()).await;
    let browser = Browser::start(1280, 900).await;

    // Create and start an interleaving experiment from the form.
    browser.goto(&server.url("/ui#/experiments")).await;
    browser.find("#new-experiment").await;
    browser.find("#new-name").await.send_keys("blind-test").await.unwrap();
    browser.find("#new-mode").await.select_by_value("interleave").await.unwrap();
    let arms = browser.all("#new-arms select[name=arm-model]").await;
    assert_eq!(arms.len(), 2);
    arms[0].select_by_value("tiny-encoder").await.unwrap();
    arms[1].select_by_value("tiny-two-tower").await.unwrap();
    browser.screenshot_page("experiments").await;
    browser.find("#new-experiment button[type=submit]").await.click().await.unwrap();
    browser
        .until("the experiment's page", "document.getElementById('experiment-status')?.textContent === 'running'")
        .await;
    browser.screenshot("experiment-new").await;

    // It routes searches: a unit's search under it is interleaved from both arms.
    let routed =
        common::search(&server, json!({"query": "sort a list", "experiment": "blind-test", "unit_id": "someone"}))
            .await;
    assert_eq!(routed["experiment"]["name"], "blind-test");
    assert_eq!(routed["experiment"]["status"], "running");
    assert_eq!(routed["arms"], json!(["tiny-encoder", "tiny-two-tower"]));

    // Blind judging: no arm and no score is shown; a graded mark is a click the report counts.
    browser.find("a[href^='#/judge']").await.click().await.unwrap();
    let rater = browser.find("#judge-rater").await;
    rater.send_keys("alice").await.unwrap();
    browser
        .find("#judge-query")
        .await
        .send_keys(&format!("sort a list{}", char::from(fantoccini::key::Key::Enter)))
        .await
        .unwrap();
    browser.until("the blind list", "document.querySelectorAll('#judge-results .hit').length > 0").await;
    let page: String =
        serde_json::from_value(browser.js("return document.getElementById('judge-results').innerText", vec![]).await)
            .unwrap();
    for label in ["tiny-encoder", "tiny-two-tower"] {
        assert!(!page.contains(label), "the blind list names no model: {page}");
    }
    let first = browser.find("#judge-results .hit").await;
    let doc_id = first.attr("data-id").await.unwrap().unwrap();
    first.find(fantoccini::Locator::Css("button[data-grade='2']")).await.unwrap().click().await.unwrap();
    browser.until("the judged mark", "document.querySelector('#judge-results .hit').dataset.judged === '2'").await;
    browser.screenshot("judge").await;

    let (status, report) = server.get("/v1/experiments/blind-test/report").await;
    assert_eq!(status, 200, "{report}");
    let il = &report["interleave"];
    let credited: u64 = il["credited_clicks"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(credited, 1, "the rater's mark is one credited click: {il}");
    let wins: u64 = il["wins"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(wins, 1, "{il}");
    // The rater is the unit: the judged search is alice's exposure, and the graded judgement exports.
    let export = server.client.get(server.url("/v1/experiments/blind-test/judgements")).send().await.unwrap();
    assert_eq!(export.status(), 200);
    let qrels = export.text().await.unwrap();
    assert!(qrels.lines().any(|l| l == format!("sort a list\t{doc_id}\t2")), "{qrels}");

    // The report page: preference and the timeline chart; pausing from the page stops the routing.
    browser.goto(&server.url("/ui#/experiments/blind-test")).await;
    browser.until("the wins card", "document.getElementById('interleave-wins')?.textContent.includes('1')").await;
    browser
        .until("the timeline chart", "document.querySelectorAll('#experiment-report svg [data-series]').length === 3")
        .await;
    browser.screenshot_page("experiment-report").await;
    let pause = browser.find("#experiment-actions button").await;
    assert_eq!(pause.text().await.unwrap(), "Pause");
    pause.click().await.unwrap();
    browser.until("the paused badge", "document.getElementById('experiment-status')?.textContent === 'paused'").await;
    let paused =
        common::search(&server, json!({"query": "sort a list", "experiment": "blind-test", "unit_id": "someone"}))
            .await;
    assert_eq!(paused["experiment"]["logged"], false, "a paused experiment logs nothing");
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_pairs_file_is_evaluated_with_progress_and_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_corpus(dir.path()).await;
    // 150 pairs: more than the 100 answered at once, so the page follows a job.
    let mut pairs = Vec::new();
    for doc in sample_corpus() {
        let (id, text) = (doc["id"].as_str().unwrap(), doc["text"].as_str().unwrap());
        // Partial and shuffled wordings, so the tiny models rank imperfectly and differ.
        let words: Vec<&str> = text.split_whitespace().collect();
        let reversed: Vec<&str> = words.iter().rev().copied().collect();
        let queries =
            [words[..3].join(" "), format!("how do I {}", words[words.len() - 4..].join(" ")), reversed.join(" ")];
        for query in queries {
            pairs.push(json!({"query": query, "doc_id": id}));
        }
    }
    assert!(pairs.len() > 100);
    let file = dir.path().join("pairs.jsonl");
    std::fs::write(&file, pairs.iter().map(|p| format!("{p}\n")).collect::<String>()).unwrap();

    let browser = Browser::start(1280, 900).await;
    browser.goto(&server.url("/ui#/eval")).await;
    browser.until("the model choices", "document.querySelectorAll('#eval-models input').length === 3").await;
    browser.find("#eval-file").await.send_keys(file.to_str().unwrap()).await.unwrap();
    browser.find("#eval-run").await.click().await.unwrap();
    browser.until("the results table", "document.querySelectorAll('#eval-table tbody tr').length === 3").await;
    browser.until("the recall plot", "document.querySelectorAll('#eval-results svg [data-series]').length === 3").await;
    browser.screenshot_page("eval").await;

    // The table holds what the API computes for the same pairs (a seeded bootstrap: the same intervals).
    let shown: Vec<(String, f64)> = serde_json::from_value(
        browser.js("return [...document.querySelectorAll('#eval-table tbody tr')].map(r => [r.dataset.model, Number(r.dataset.mrr)])", vec![]).await,
    )
    .unwrap();
    let (status, job) = server.post("/v1/eval", &json!({"pairs": pairs, "k": [1, 10, 100]})).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    let result = loop {
        let (_, job) = server.get(&format!("/v1/eval/{id}")).await;
        if job["status"] == "done" {
            break job["result"].clone();
        }
        assert_ne!(job["status"], "failed", "{job}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for (model, mrr) in shown {
        let row = result["models"].as_array().unwrap().iter().find(|m| m["model"] == model.as_str()).unwrap();
        assert!((row["mrr_at_10"]["value"].as_f64().unwrap() - mrr).abs() < 1e-12, "{model}");
    }
    browser.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_server_gets_its_key_from_the_page_and_the_models_view_lists_the_models() {
    use duet::auth::{keys, AuthSettings, Scope};
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config(&dir.path().join("duet.db"));
    let (key, entry) = keys::generate("browser", [Scope::Search].into_iter().collect()).unwrap();
    let key = key.as_str();
    config.auth = AuthSettings { keys: vec![entry], ..AuthSettings::default() };
    let server = TestServer::start(config).await;
    // The page itself is open; its API calls are not.
    let page = server.client.get(server.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    assert_eq!(server.client.get(server.url("/v1/models")).send().await.unwrap().status(), 401);

    let browser = Browser::start(1280, 900).await;
    browser.goto(&server.url("/ui#/models")).await;
    browser.until("the key dialog", "document.getElementById('key-dialog').open").await;
    browser.screenshot("key").await;
    browser.find("#key-input").await.send_keys(key).await.unwrap();
    browser.find("#key-form button[type=submit]").await.click().await.unwrap();
    browser.until("the models table", "document.querySelectorAll('#models-table tbody tr').length === 3").await;
    let rows: Vec<(String, String)> = serde_json::from_value(
        browser
            .js("return [...document.querySelectorAll('#models-table tbody tr')].map(r => [r.dataset.model, r.querySelector('.badge').textContent])", vec![])
            .await,
    )
    .unwrap();
    let (_, list) = {
        let response = server.client.get(server.url("/v1/models")).bearer_auth(key).send().await.unwrap();
        common::read(response).await
    };
    let served: Vec<String> =
        list["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), served);
    assert!(rows.iter().all(|r| r.1 == "ready"), "{rows:?}");
    // The key is kept for the tab only (sessionStorage), never in localStorage.
    let stored = browser.js("return [sessionStorage.getItem('duet.api-key'), Object.keys(localStorage)]", vec![]).await;
    assert_eq!(stored, json!([key, []]));
    browser.screenshot("models").await;
    browser.close().await;
    server.stop().await;
}
