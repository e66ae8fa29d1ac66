//! The session timeline page in a real headless Chromium, driven over
//! WebDriver (Debian's chromium and chromedriver; `scripts/install-browser.sh`
//! installs them): the page shows a session fed by the test, applies its
//! live deltas and shows its state.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sessionfold_testkit::{eventually, free_port};

use crate::helpers::{DEADLINE, expected_document, spawn_app_with};

/// A chromedriver process and one browser session in it, ended on drop.
pub(crate) struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) async fn start() -> Self {
        for tool in ["chromium", "chromedriver"] {
            assert!(
                which(tool),
                "{tool} is missing: run scripts/install-browser.sh (make test does)"
            );
        }
        let port = free_port();
        // Its own process group: the browser it starts is in it too, so
        // that dropping the `Browser` ends both and leaves nothing running.
        let driver = Command::new("chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let status = format!("http://127.0.0.1:{port}/status");
        eventually("chromedriver answers", DEADLINE, || {
            let http = http.clone();
            let status = status.clone();
            async move {
                let body: Value = http.get(&status).send().await.ok()?.json().await.ok()?;
                body["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let created: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Self {
            driver,
            http,
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            _profile: profile,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let value: Value = response.json().await.unwrap();
        value["value"].clone()
    }

    pub(crate) async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Runs `script` in the page and returns its result.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn screenshot_png(&self) -> Vec<u8> {
        use base64::Engine as _;
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every browser process it started.
        let group = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test]
async fn the_timeline_page_shows_a_session_and_follows_it_live() {
    // The session ends a second after its SESSION_END, so the page sees
    // its state change.
    let app = spawn_app_with(&[("SESSION_END_GRACE_SECS", "1")]).await;
    let page = app
        .http
        .get(format!("http://{}/timeline/x", app.api_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "the page loads nothing external");
    }

    let first = r#"[{"type":"SESSION_START","timestamp":100},{"type":"EVENT","timestamp":101,"name":"cart_loaded"},{"type":"EVENT","timestamp":104,"name":"checkout"}]"#;
    let second = r#"[{"type":"EVENT","timestamp":102,"name":"item_added"},{"type":"SESSION_END","timestamp":106}]"#;
    let mut producer = app.connect("demo session").await;
    producer.send_accepted(first).await;
    app.wait_for_document("demo session", &expected_document("demo session", &[first]))
        .await;

    let browser = Browser::start().await;
    browser
        .open(&format!("http://{}/timeline/demo%20session", app.api_addr))
        .await;
    let children =
        "return Array.from(document.querySelectorAll('li.child')).map(li => li.textContent)";
    let shown = |expected: Vec<&'static str>| {
        let browser = &browser;
        async move {
            eventually("the page shows the children", DEADLINE, || async {
                let texts = browser.eval(children).await;
                let texts: Vec<String> = serde_json::from_value(texts).ok()?;
                (texts == expected).then_some(())
            })
            .await
        }
    };
    shown(vec!["101  cart_loaded", "104  checkout"]).await;
    assert_eq!(
        browser
            .eval("return document.getElementById('start').textContent")
            .await,
        "100"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('end').textContent")
            .await,
        "–"
    );

    // A new frame appears without reloading the page.
    producer.send_accepted(second).await;
    shown(vec!["101  cart_loaded", "102  item_added", "104  checkout"]).await;
    assert_eq!(
        browser
            .eval("return document.getElementById('end').textContent")
            .await,
        "106"
    );
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#axis circle').length")
            .await,
        3
    );
    // It came as a delta, applied in place: one document in all.
    let taken = "return [document.body.dataset.documents, document.body.dataset.deltas, \
                 document.getElementById('revision').textContent]";
    let taken: Vec<Option<String>> = serde_json::from_value(browser.eval(taken).await).unwrap();
    assert_eq!(taken[0].as_deref(), Some("1"), "{taken:?}");
    assert!(taken[1].as_deref().is_some_and(|n| n != "0"), "{taken:?}");
    assert_eq!(taken[2].as_deref(), Some("2"), "the revision: {taken:?}");
    assert_eq!(
        browser
            .eval("return document.getElementById('state').textContent")
            .await,
        "open"
    );

    // The session ends by itself: the page shows its state.
    eventually("the page shows the state ended", DEADLINE, || async {
        let state = browser
            .eval("return document.getElementById('state').textContent")
            .await;
        (state == "ended").then_some(())
    })
    .await;

    let png = browser.screenshot_png().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(path) = std::env::var("SESSIONFOLD_SCREENSHOT") {
        std::fs::write(path, png).unwrap();
    }
}
