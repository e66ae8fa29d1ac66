//! The session list page at `/timeline` in a real headless Chromium (as
//! `timeline_page.rs` drives it): it lists the sessions `GET /sessions`
//! finds, its filters narrow the list, its next page continues it, and each
//! session links to its timeline.

use serde_json::{Value, json};
use sessionfold_testkit::eventually;

use crate::helpers::{DEADLINE, spawn_app};
use crate::timeline_page::Browser;

/// The session ids the page's table shows, in order.
const ROWS: &str = "return Array.from(document.querySelectorAll('tr.session td:first-child a')).map(a => a.textContent)";

async fn rows_become(browser: &Browser, expected: &[&str]) {
    eventually("the list shows the sessions", DEADLINE, || async {
        let shown: Vec<String> = serde_json::from_value(browser.eval(ROWS).await).ok()?;
        (shown == expected).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_session_list_finds_pages_and_links_to_timelines() {
    let app = spawn_app().await;
    for (session, start, name) in [
        ("list a", 10, "checkout"),
        ("list b", 20, "browse"),
        ("list c", 30, "checkout"),
    ] {
        let frame = json!([
            {"type": "SESSION_START", "timestamp": start},
            {"type": "EVENT", "timestamp": start + 1, "name": name}
        ])
        .to_string();
        app.connect(session).await.send_accepted(&frame).await;
    }
    eventually("every session is indexed", DEADLINE, || async {
        let url = format!("http://{}/sessions", app.api_addr);
        let body: Value = app.http.get(url).send().await.ok()?.json().await.ok()?;
        (body["sessions"].as_array()?.len() == 3).then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser
        .open(&format!("http://{}/timeline", app.api_addr))
        .await;
    rows_become(&browser, &["list a", "list b", "list c"]).await;

    // A filter typed into the form narrows the list and is kept in the URL.
    browser
        .eval("document.querySelector('input[name=name]').value = 'checkout'; document.getElementById('search').click(); return null")
        .await;
    rows_become(&browser, &["list a", "list c"]).await;
    assert_eq!(
        browser.eval("return window.location.search").await,
        "?name=checkout&sort=start&order=asc&limit=50"
    );

    // Pages of one, in order, until there is no next page.
    browser
        .open(&format!(
            "http://{}/timeline?limit=1&order=desc",
            app.api_addr
        ))
        .await;
    rows_become(&browser, &["list c"]).await;
    for expected in [&["list c", "list b"][..], &["list c", "list b", "list a"]] {
        browser
            .eval("document.getElementById('more').click(); return null")
            .await;
        rows_become(&browser, expected).await;
    }
    eventually("the last page hides the next button", DEADLINE, || async {
        (browser
            .eval("return document.getElementById('more').hidden")
            .await
            == true)
            .then_some(())
    })
    .await;

    // Each session links to its timeline.
    let href = browser
        .eval("return document.querySelector('tr.session a').getAttribute('href')")
        .await;
    assert_eq!(href, "/timeline/list%20c");
    browser
        .eval("document.querySelector('tr.session a').click(); return null")
        .await;
    eventually("the timeline of the session opens", DEADLINE, || async {
        let children: Vec<String> = serde_json::from_value(
            browser
                .eval("return Array.from(document.querySelectorAll('li.child')).map(li => li.textContent)")
                .await,
        )
        .ok()?;
        (children == ["31  checkout"]).then_some(())
    })
    .await;

    // Bad input shows the api's error.
    browser
        .open(&format!("http://{}/timeline?limit=100000", app.api_addr))
        .await;
    eventually("the error is shown", DEADLINE, || async {
        let text = browser
            .eval("return document.getElementById('error').textContent")
            .await;
        text.as_str()?.starts_with("invalid_query").then_some(())
    })
    .await;
}
