//! The browser UI at `/ui`: a few static files (HTML, CSS and plain JavaScript modules from the repository's
//! `ui/` folder) compiled into the binary, so the page works offline, needs no CDN and no Node at run time. The
//! page calls the same `/v1` API as any client, with the key its user types (kept for the browser session
//! only). Served with a strict Content-Security-Policy (same-origin scripts, styles and requests only), an
//! `ETag` per file and `Cache-Control: no-cache`, so a new binary's page is picked up at once.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;

/// One embedded file: its name under `/ui/`, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_str!(concat!("../../ui/", $name)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file the page is made of (`index.html` is also `/ui` itself).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("charts.js", JS),
    asset!("compare.js", JS),
    asset!("judge.js", JS),
    asset!("experiments.js", JS),
    asset!("evaluate.js", JS),
    asset!("models.js", JS),
];

/// The page may load only its own files and call only this server; nothing may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' \
    data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The names of the embedded files, for the route's description and tests.
pub fn asset_names() -> Vec<&'static str> {
    ASSETS.iter().map(|a| a.name).collect()
}

fn etag(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("\"{}\"", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if let Ok(value) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, value);
    }
    response
}

/// `GET /ui`: the page.
pub async fn page(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

/// `GET /ui/{file}`: one of the page's files; any other name is `404 no-such-file`.
pub async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &headers),
        None => ApiError::not_found("no-such-file", format!("the UI has no file `{name}`; it starts at /ui"))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        // Each `import ... from "./x.js"` and the page's own references must name an embedded file, or the
        // browser gets a 404 for it.
        let names = asset_names();
        for asset in ASSETS {
            for part in asset.body.split(['"', '\'']).filter(|p| p.starts_with("./") || p.starts_with("/ui/")) {
                let name = part.trim_start_matches("./").trim_start_matches("/ui/");
                if name.ends_with(".js") || name.ends_with(".css") {
                    assert!(names.contains(&name), "{} refers to {part}, which is not embedded", asset.name);
                }
            }
        }
        // And every embedded script is imported by some file (no dead file).
        for name in names.iter().filter(|n| n.ends_with(".js")) {
            let used =
                ASSETS.iter().any(|a| a.body.contains(&format!("./{name}")) || a.body.contains(&format!("/ui/{name}")));
            assert!(used, "{name} is embedded but nothing loads it");
        }
    }

    #[test]
    fn an_unchanged_file_is_answered_not_modified() {
        let mut headers = HeaderMap::new();
        let first = serve(&ASSETS[1], &headers);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        headers.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve(&ASSETS[1], &headers).status(), StatusCode::NOT_MODIFIED);
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(serve(&ASSETS[1], &headers).status(), StatusCode::OK);
    }
}
