//! The api describes itself at `/openapi.json`, and schemathesis, run
//! against a live api with a stored document, finds no difference between
//! what the document says and what the api answers.
//!
//! schemathesis comes from the venv `scripts/bootstrap.sh` creates in
//! `.deps/venv` (`make test` runs it first); without it the schemathesis
//! test is skipped with a message.

use std::path::PathBuf;
use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{expected_document, spawn_split_app};

/// `.deps/venv/bin/schemathesis` of the workspace (or `SESSIONFOLD_SCHEMATHESIS`).
fn schemathesis() -> PathBuf {
    std::env::var_os("SESSIONFOLD_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps/venv/bin/schemathesis")
        })
}

const SESSION: &str = "e6fa79ca-d142-4046-a134-5134f16a0b5e";

#[tokio::test]
async fn the_api_serves_its_openapi_document() {
    let app = spawn_split_app().await;
    let response = app
        .http
        .get(format!("http://{}/openapi.json", app.api_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document}"
    );
    for path in [
        "/data",
        "/data/children",
        "/sessions",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} missing");
    }
    assert!(document["components"]["schemas"].get("ErrorBody").is_some());
}

#[tokio::test]
async fn schemathesis_finds_no_failures_against_the_live_api() {
    let binary = schemathesis();
    if !binary.exists() {
        println!(
            "SKIPPED schemathesis_finds_no_failures_against_the_live_api: {} is missing; \
             run `make deps` (scripts/bootstrap.sh) to create the venv",
            binary.display()
        );
        return;
    }
    let app = spawn_split_app().await;
    let _processor = app.start_processor();
    // A stored document, so that the documented example session gets a 200
    // and its body is checked against the schema.
    let frame = r#"[{"type":"SESSION_START","timestamp":1569972082},{"type":"EVENT","timestamp":1569972083,"name":"middle_event","id":"m"},{"type":"SESSION_END","timestamp":1569972086}]"#;
    let mut producer = app.connect(SESSION).await;
    producer.send_accepted(frame).await;
    app.wait_for_document(SESSION, &expected_document(SESSION, &[frame]))
        .await;

    let work = tempfile::tempdir().unwrap();
    // 503 is a documented answer of `GET /data` (`not_yet_applied` when a
    // `min_seq` is past what is applied, `unavailable`): the statuses
    // that are no server error are listed, and every other 5xx is still a
    // failure.
    std::fs::write(
        work.path().join("schemathesis.toml"),
        "[checks.not_a_server_error]\nexpected-statuses = [\"2XX\", \"3XX\", \"4XX\", \"503\"]\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(&binary)
        .current_dir(work.path())
        .args([
            "run",
            &format!("http://{}/openapi.json", app.api_addr),
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "60",
            "--seed",
            "20240505",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--wait-for-schema",
            "20",
            "--suppress-health-check",
            "all",
            // A live stream that works never ends; its limits have their
            // own tests (api/tests/limits).
            "--exclude-path",
            "/data/stream",
        ])
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");
}
