//! Conformance cases of documents and their embeddings: upsert and replace, exact metadata, reads by id, deletes
//! with their embeddings, embeddings per (model, version) and going stale, and paging in byte order of ids.

use std::collections::HashMap;
use std::sync::Arc;

use duet::store::{content_hash, Fingerprint, Store};
use serde_json::json;

use super::{bits, doc, emb, ids, stored, wait_until_after};

pub async fn documents_round_trip(store: Arc<dyn Store>) {
    let metadata = json!({
        "title": "Crème brûlée — 日本語のテキスト 🍮",
        "ключ": "значение",
        "escapes": "quote \" backslash \\ newline \n tab \t",
        "nested": {"tags": ["a", "b", {"deep": [1, 2.5, -3, null, true, false]}], "empty": {}, "none": []},
        "numbers": {"int": 9007199254740993i64, "big": 12345678901234567890u64, "neg": -42, "frac": 0.1, "tiny": 1e-7},
    });
    store.upsert(&[doc("a", "alpha", metadata.clone()), doc("b", "beta", json!({}))], &[]).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 2);

    let a = store.get("a").await.unwrap().expect("a is stored");
    assert_eq!((a.id.as_str(), a.text.as_str()), ("a", "alpha"));
    assert_eq!(a.metadata, metadata, "metadata comes back exactly");
    assert_eq!(a.content_hash, content_hash("alpha"));
    assert_eq!(a.created_at, a.updated_at, "a new document is created and updated at once");
    assert!(chrono::DateTime::parse_from_rfc3339(&a.created_at).is_ok(), "RFC 3339: {}", a.created_at);
    assert_eq!(store.get("absent").await.unwrap(), None);

    // Replacing keeps when the document was created.
    wait_until_after(&a.updated_at).await;
    store.upsert(&[doc("a", "alpha two", json!({"v": 2}))], &[]).await.unwrap();
    let replaced = store.get("a").await.unwrap().unwrap();
    assert_eq!((replaced.text.as_str(), &replaced.metadata), ("alpha two", &json!({"v": 2})));
    assert_eq!(replaced.content_hash, content_hash("alpha two"));
    assert_eq!(replaced.created_at, a.created_at, "created_at is kept on replace");
    assert!(replaced.updated_at > a.updated_at, "{} after {}", replaced.updated_at, a.updated_at);
    assert_eq!(store.count().await.unwrap(), 2, "a replace adds no document");

    let many = store.get_many(&["a".into(), "b".into(), "absent".into()]).await.unwrap();
    let mut found: Vec<_> = many.keys().map(String::as_str).collect();
    found.sort();
    assert_eq!(found, ["a", "b"]);
    assert_eq!(many["a"], replaced);
    assert_eq!(many["b"], store.get("b").await.unwrap().unwrap());
    assert_eq!(many["b"].metadata, json!({}));

    let fingerprints = store.fingerprints(&["a".into(), "absent".into()]).await.unwrap();
    let expected = HashMap::from([(
        "a".to_string(),
        Fingerprint { content_hash: content_hash("alpha two"), metadata: json!({"v": 2}) },
    )]);
    assert_eq!(fingerprints, expected);
    assert!(store.get_many(&[]).await.unwrap().is_empty());
    assert!(store.fingerprints(&[]).await.unwrap().is_empty());
    store.upsert(&[], &[]).await.expect("an empty upsert is no error");

    assert!(store.delete("a").await.unwrap(), "a existed");
    assert!(!store.delete("a").await.unwrap(), "a is gone");
    assert!(!store.delete("absent").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.count().await.unwrap(), 1);
    store.close().await;
}

pub async fn embeddings_are_kept_per_model_version(store: Arc<dyn Store>) {
    // Negative, tiny, subnormal and huge values: they must come back bit for bit.
    let a1 = [1.0, -2.5, 1e-30, f32::MIN_POSITIVE, 1e-45, -3.4e38, 0.333_333_34, -0.0];
    let b1 = [0.5, 0.25, -1e-38, 7.0];
    let a2 = [-1.0, 2.0];
    let c_n = [3.0, -4.0, 5e-7];
    store
        .upsert(
            &[doc("a", "alpha", json!({})), doc("b", "beta", json!({})), doc("c", "gamma", json!({}))],
            &[
                emb("m", "v1", "a", "alpha", &a1),
                emb("m", "v1", "b", "beta", &b1),
                emb("m", "v2", "a", "alpha", &a2),
                emb("n", "v1", "c", "gamma", &c_n),
            ],
        )
        .await
        .unwrap();
    assert_eq!(stored(&store, "m", "v1").await, [("a".into(), bits(&a1)), ("b".into(), bits(&b1))]);
    assert_eq!(stored(&store, "m", "v2").await, [("a".into(), bits(&a2))]);
    assert_eq!(stored(&store, "n", "v1").await, [("c".into(), bits(&c_n))]);
    for (model, version) in [("m", "v3"), ("n", "v2"), ("absent", "v1")] {
        assert!(stored(&store, model, version).await.is_empty(), "{model} {version} sees nothing");
    }

    // Written later, and written again (replaced).
    let c1 = [9.0, -9.0];
    let a1_again = [0.125, -0.125];
    store.put_embeddings(&[emb("m", "v1", "c", "gamma", &c1)]).await.unwrap();
    store.put_embeddings(&[emb("m", "v1", "a", "alpha", &a1_again)]).await.unwrap();
    assert_eq!(
        stored(&store, "m", "v1").await,
        [("a".into(), bits(&a1_again)), ("b".into(), bits(&b1)), ("c".into(), bits(&c1))]
    );

    // New text for b: its embeddings are stale, and one of the old text does not count either.
    store.upsert(&[doc("b", "beta two", json!({}))], &[]).await.unwrap();
    store.put_embeddings(&[emb("m", "v1", "b", "beta", &b1)]).await.unwrap();
    assert_eq!(stored(&store, "m", "v1").await, [("a".into(), bits(&a1_again)), ("c".into(), bits(&c1))]);
    assert_eq!(ids(&store.missing_embeddings("m", "v1", None, 10).await.unwrap()), ["b"]);
    let of = store.embeddings_of("m", "v1", &["a".into(), "b".into(), "c".into(), "absent".into()]).await.unwrap();
    let mut of: Vec<_> = of.into_iter().map(|(id, v)| (id, bits(&v))).collect();
    of.sort();
    assert_eq!(of, [("a".into(), bits(&a1_again)), ("c".into(), bits(&c1))]);
    assert!(store.embeddings_of("n", "v1", &["a".into(), "b".into()]).await.unwrap().is_empty());
    assert!(store.embeddings_of("m", "v1", &[]).await.unwrap().is_empty());

    // A deleted document takes its embeddings with it, of every model; they do not come back with it.
    assert!(store.delete("a").await.unwrap());
    assert_eq!(stored(&store, "m", "v1").await, [("c".into(), bits(&c1))]);
    assert!(stored(&store, "m", "v2").await.is_empty());
    store.upsert(&[doc("a", "alpha", json!({}))], &[]).await.unwrap();
    assert!(stored(&store, "m", "v2").await.is_empty(), "no embedding survives its document's delete");
    store.close().await;
}

/// Ids whose byte order ("B" < "Z" < "a" < … < "é") differs from the order of a language's rules.
const IDS: [&str; 7] = ["z", "é", "a", "B", "b", "ab", "Z"];
const BYTE_ORDER: [&str; 7] = ["B", "Z", "a", "ab", "b", "z", "é"];

pub async fn missing_embeddings_page_by_id_in_byte_order(store: Arc<dyn Store>) {
    let documents: Vec<_> = IDS.iter().map(|id| doc(id, &format!("text {id}"), json!({"id": id}))).collect();
    store.upsert(&documents, &[emb("m", "v1", "b", "text b", &[1.0])]).await.unwrap();
    let missing: Vec<&str> = BYTE_ORDER.iter().copied().filter(|id| *id != "b").collect();
    assert_eq!(ids(&store.missing_embeddings("m", "v1", None, 100).await.unwrap()), missing);
    assert_eq!(ids(&store.missing_embeddings("other", "v1", None, 100).await.unwrap()), BYTE_ORDER);

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.missing_embeddings("m", "v1", after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        pages.push(ids(&page).into_iter().map(String::from).collect::<Vec<_>>());
        assert!(pages.len() <= 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [vec!["B", "Z"], vec!["a", "ab"], vec!["z", "é"]]);

    assert_eq!(ids(&store.missing_embeddings("m", "v1", Some("a"), 100).await.unwrap()), ["ab", "z", "é"]);
    assert_eq!(ids(&store.missing_embeddings("m", "v1", Some("y"), 1).await.unwrap()), ["z"], "after any string");
    assert!(store.missing_embeddings("m", "v1", Some("é"), 100).await.unwrap().is_empty());
    let first = &store.missing_embeddings("m", "v1", None, 1).await.unwrap()[0];
    assert_eq!(Some(first), store.get("B").await.unwrap().as_ref(), "whole documents come back");
    store.close().await;
}

pub async fn documents_after_pages_every_document_in_byte_order(store: Arc<dyn Store>) {
    let documents: Vec<_> = IDS.iter().map(|id| doc(id, &format!("text {id}"), json!({"id": id}))).collect();
    store.upsert(&documents, &[]).await.unwrap();
    assert_eq!(ids(&store.documents_after(None, 100).await.unwrap()), BYTE_ORDER);
    assert!(store.documents_after(None, 0).await.unwrap().is_empty());

    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.documents_after(after.as_deref(), 3).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for d in &page {
            assert_eq!(Some(d), store.get(&d.id).await.unwrap().as_ref(), "whole documents come back");
        }
        pages.push(ids(&page).into_iter().map(String::from).collect::<Vec<_>>());
        assert!(pages.len() <= 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [vec!["B", "Z", "a"], vec!["ab", "b", "z"], vec!["é"]]);
    assert_eq!(ids(&store.documents_after(Some("ab"), 2).await.unwrap()), ["b", "z"]);
    store.close().await;
}

/// Reads by a long list of ids (more than SQLite binds in one statement by default, as an import asks).
pub async fn many_ids_are_read_at_once(store: Arc<dyn Store>) {
    const N: usize = 1200;
    let all: Vec<String> = (0..N).map(|i| format!("d{i:04}")).collect();
    let documents: Vec<_> = all.iter().map(|id| doc(id, &format!("text {id}"), json!({"n": id}))).collect();
    let vector = |i: usize| [i as f32, -(i as f32) / 1e6];
    let mut embeddings: Vec<_> =
        all.iter().enumerate().map(|(i, id)| emb("m", "v1", id, &format!("text {id}"), &vector(i))).collect();
    embeddings
        .extend(all.iter().enumerate().step_by(2).map(|(i, id)| emb("m", "v2", id, &format!("text {id}"), &vector(i))));
    store.upsert(&documents, &embeddings).await.unwrap();
    assert_eq!(store.count().await.unwrap(), N as u64);

    let mut asked = all.clone();
    asked.push("absent".into());
    assert_eq!(store.get_many(&asked).await.unwrap().len(), N);
    assert_eq!(store.fingerprints(&asked).await.unwrap().len(), N);
    let of = store.embeddings_of("m", "v1", &asked).await.unwrap();
    assert_eq!(of.len(), N);
    for (i, id) in all.iter().enumerate() {
        assert_eq!(bits(&of[id]), bits(&vector(i)), "{id}");
    }
    assert_eq!(store.embeddings_of("m", "v2", &asked).await.unwrap().len(), N / 2);
    assert_eq!(store.embeddings("m", "v1").await.unwrap().len(), N);
    store.close().await;
}
