use crate::helpers::{expected_document, spawn_app};

#[tokio::test]
async fn zz_repro() {
    let app = spawn_app().await;
    // 1. Event nesting 127 levels: accepted, document 129 levels deep.
    let deep = format!(r#"[{{"type":"EVENT","timestamp":1,"x":{}{}}}]"#, "[".repeat(126), "]".repeat(126));
    let mut p = app.connect("deep").await;
    let r = p.send_and_reply(&deep).await;
    println!("deep reply: {}", r.to_json());
    app.wait_until_consumed().await;
    let body = app.http.get(app.data_url(Some("deep"))).send().await.unwrap();
    let status = body.status();
    let text = body.text().await.unwrap();
    println!("GET deep: {status}, {} bytes, serde_json parse: {:?}", text.len(), serde_json::from_str::<serde_json::Value>(&text).err());
    // 2. A number RedisJSON stores 1 ulp off.
    let frame = r#"[{"type":"EVENT","timestamp":1,"n":1.3634675868499688e135}]"#;
    let mut p = app.connect("ulp").await;
    p.send_accepted(frame).await;
    app.wait_until_consumed().await;
    let text = app.http.get(app.data_url(Some("ulp"))).send().await.unwrap().text().await.unwrap();
    println!("GET ulp: {text}");
    println!("fold: {}", expected_document("ulp", &[frame]));
}
