//! A real headless Chromium for the browser tests: starts Debian's `chromedriver` on a free port (installed by
//! `scripts/setup --test`; `DUET_CHROMEDRIVER` and `DUET_CHROMIUM` override the paths), opens a WebDriver
//! session on it with fantoccini, and offers the few waits and reads the UI tests need. Screenshots go to
//! `ui-screenshots/` in cargo's `CARGO_TARGET_TMPDIR`, inside `target/`: the suite's artifacts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a wait for the page may take before the test fails (a slow, busy CI machine included).
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    driver: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width` × `height`.
    pub async fn start(width: u32, height: u32) -> Self {
        let driver_path = std::env::var("DUET_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let chromium = std::env::var("DUET_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{driver_path}` ({e}): `scripts/setup --test` installs it"));
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-extensions", "--no-first-run", format!("--window-size={width},{height}")],
            }),
        );
        let deadline = Instant::now() + WAIT;
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("no WebDriver session on {url}: {e}"),
            }
        };
        client.set_window_size(width, height).await.unwrap();
        Self { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap()
    }

    /// Polls the page expression `condition` until it is truthy.
    pub async fn until(&self, what: &str, condition: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.js(&format!("return !!({condition});"), vec![]).await;
            if value == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let notice = self.js("return document.getElementById('notice')?.textContent", vec![]).await;
                let shot = self.screenshot("failed").await;
                let text = self.js("return document.body.innerText.slice(0, 3000)", vec![]).await;
                panic!(
                    "the page never showed {what} ({condition}); notice: {notice}; screenshot {}; page text: {text}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves a PNG of the window as `<name>.png` in `ui-screenshots/` of `CARGO_TARGET_TMPDIR`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Like [`Browser::screenshot`], of the whole page: the window is made as tall as the page (up to 4,000
    /// px) for the picture, then put back.
    pub async fn screenshot_page(&self, name: &str) -> PathBuf {
        let (width, height) = self.client.get_window_size().await.unwrap();
        let page = self.js("return document.documentElement.scrollHeight", vec![]).await.as_u64().unwrap_or(height);
        let tall = (page
            + (height.saturating_sub(self.js("return window.innerHeight", vec![]).await.as_u64().unwrap_or(height))))
        .clamp(height, 4000);
        self.client.set_window_size(width as u32, tall as u32).await.unwrap();
        let path = self.screenshot(name).await;
        self.client.set_window_size(width as u32, height as u32).await.unwrap();
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
