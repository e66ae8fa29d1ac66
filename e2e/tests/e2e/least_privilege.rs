//! The shipped ACLs (deploy/redis/users.acl, deploy/nats/accounts.conf):
//! the pipeline works with them, and each service's credentials can do no
//! more than its job.

use std::path::PathBuf;
use std::time::Duration;

use sessionfold_testkit::{NatsServer, RedisServer, init_test_tracing};

use crate::helpers::{DEADLINE, default_names, expected_document, spawn_split_app_on};

fn deploy_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

async fn connect_as(url: &str) -> async_nats::Client {
    let settings = sessionfold_common::settings::NatsSettings::local(url);
    sessionfold_common::jetstream::connect(&settings, "least-privilege-test")
        .await
        .unwrap()
}

fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    format!("{scheme}://{user}:{password}@{rest}")
}

#[tokio::test]
async fn each_service_can_do_its_job_and_nothing_more() {
    init_test_tracing();
    let accounts = std::fs::read_to_string(deploy_file("nats/accounts.conf")).unwrap();
    let nats = NatsServer::start_with_config(&accounts).unwrap();
    let acl =
        sessionfold_testkit::users_acl(sessionfold_testkit::search_module().unwrap().is_some())
            .unwrap();
    let redis = RedisServer::start_with_args(&["--aclfile", acl.to_str().unwrap()]).unwrap();

    // The ACLs name the default stream, consumer and key prefix.
    let nats_as = |user: &str, password: &str| with_credentials(&nats.url(), user, password);
    let redis_as = |user: &str, password: &str| with_credentials(&redis.url(), user, password);
    let ingest_nats = nats_as("ingest", "ingest-dev-password");
    let processor_nats = nats_as("processor", "processor-dev-password");
    let api_redis = redis_as("sessionfold-api", "api-dev-password");
    let processor_redis = redis_as("sessionfold-processor", "processor-dev-password");

    let api_nats = nats_as("api", "api-dev-password");
    let operator_nats = nats_as("operator", "operator-dev-password");
    let app = spawn_split_app_on(
        nats,
        redis,
        default_names(),
        &[("NATS_URL", &ingest_nats), ("LATE_EVENTS", "reject")],
        &[("REDIS_URL", &api_redis), ("NATS_URL", &api_nats)],
    )
    .await;
    // Sessions close quickly and are closed for good a second later, so the
    // lifecycle's every step runs under the ACLs too.
    let _processor = app.start_processor_with(&[
        ("NATS_URL", &processor_nats),
        ("REDIS_URL", &processor_redis),
        ("SESSION_IDLE_TIMEOUT_SECS", "1"),
        ("ALLOWED_LATENESS_SECS", "1"),
    ]);

    let frame =
        r#"[{"type":"SESSION_START","timestamp":1},{"type":"EVENT","timestamp":2,"name":"a"}]"#;
    let mut producer = app.connect("acl").await;
    let seq = producer.send_and_reply(frame).await.seq().unwrap();
    // Read your writes: the api's user looks up the consumer's ack floor.
    let mut url = app.data_url(Some("acl"));
    url.query_pairs_mut()
        .append_pair("min_seq", &seq.to_string())
        .append_pair("wait_ms", "10000");
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        expected_document("acl", &[frame])
    );

    // The session closes: its finished message is stored, the api tells its
    // state, and once closed for good ingest refuses its frames.
    let operator = async_nats::jetstream::new(connect_as(&operator_nats).await);
    sessionfold_testkit::eventually("the finished message", DEADLINE, || {
        let operator = operator.clone();
        async move {
            let mut stream = operator
                .get_stream(sessionfold_core::names::DEFAULT_SESSIONS_STREAM)
                .await
                .ok()?;
            (stream.info().await.ok()?.state.messages == 1).then_some(())
        }
    })
    .await;
    let state = app
        .http
        .get(app.data_url(Some("acl")))
        .send()
        .await
        .unwrap()
        .headers()
        .get("sessionfold-session-state")
        .map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(state.as_deref(), Some("idle"));
    // Its children in pages (a read-only script) and the search of sessions
    // (the query engine, when there is one) under the api's user.
    let page: serde_json::Value = app
        .http
        .get(format!(
            "http://{}/data/children?session_id=acl&since=2&until=2",
            app.api_addr
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["children"],
        expected_document("acl", &[frame])["children"],
        "{page}"
    );
    if sessionfold_testkit::search_module().unwrap().is_some() {
        sessionfold_testkit::eventually("the session is found closed", DEADLINE, || async {
            let url = format!("http://{}/sessions?state=idle&prefix=ac", app.api_addr);
            let body: serde_json::Value = app.http.get(url).send().await.ok()?.json().await.ok()?;
            (body["sessions"][0]["session_id"] == "acl").then_some(())
        })
        .await;
    }
    sessionfold_testkit::eventually("the session is closed for good", DEADLINE, || {
        let operator = operator.clone();
        async move {
            let bucket = operator
                .get_key_value(sessionfold_core::names::DEFAULT_CLOSED_BUCKET)
                .await
                .ok()?;
            let token = sessionfold_core::SessionId::parse("acl").unwrap().token();
            bucket.get(token).await.ok()?.map(|_| ())
        }
    })
    .await;
    let mut late = app.connect("acl").await;
    let reply = late
        .send_and_reply(r#"[{"type":"EVENT","timestamp":5,"name":"late"}]"#)
        .await;
    assert_eq!(
        reply.error_code(),
        Some(sessionfold_core::ErrorCode::SessionClosed),
        "{reply:?}"
    );

    // The api's Redis user reads documents and cannot write anything.
    let doc = app.doc_key("acl");
    let other = format!("{}x", app.names.key_prefix);
    let api = redis::Client::open(api_redis.as_str()).unwrap();
    let mut api = api.get_multiplexed_async_connection().await.unwrap();
    let document: Option<String> = redis::cmd("JSON.GET")
        .arg(&doc)
        .query_async(&mut api)
        .await
        .unwrap();
    assert!(document.is_some());
    for write in [
        redis::cmd("JSON.SET").arg(&doc).arg("$").arg("{}").clone(),
        redis::cmd("DEL").arg(&doc).clone(),
        redis::cmd("SET").arg(&other).arg("1").clone(),
        redis::cmd("FLUSHALL").clone(),
    ] {
        let err = write
            .query_async::<redis::Value>(&mut api)
            .await
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    }

    // The processor's Redis user has its apply step and nothing else.
    let processor = redis::Client::open(processor_redis.as_str()).unwrap();
    let mut processor = processor.get_multiplexed_async_connection().await.unwrap();
    for command in [
        redis::cmd("FLUSHALL").clone(),
        redis::cmd("KEYS").arg("*").clone(),
        redis::cmd("SET").arg(&other).arg("1").clone(),
        redis::cmd("CONFIG").arg("GET").arg("*").clone(),
    ] {
        let err = command
            .query_async::<redis::Value>(&mut processor)
            .await
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("noperm"), "{err}");
    }

    // Ingest's NATS user publishes frames but cannot consume them.
    let ingest = connect_as(&ingest_nats).await;
    let mut js = async_nats::jetstream::new(ingest);
    js.set_timeout(Duration::from_millis(500));
    let stream = js.get_stream(&app.names.stream).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("thief".into()),
            ..Default::default()
        })
        .await;
    assert!(consumer.is_err(), "ingest created a consumer");
    let stolen = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&app.names.consumer)
        .await;
    assert!(stolen.is_err(), "ingest opened the processor's consumer");

    // The processor's NATS user cannot publish frames.
    let processor = connect_as(&processor_nats).await;
    let mut js = async_nats::jetstream::new(processor);
    js.set_timeout(Duration::from_millis(500));
    let forged = async {
        js.publish(app.subject("acl"), frame.into())
            .await?
            .await
            .map_err(anyhow::Error::from)
    };
    assert!(forged.await.is_err(), "the processor published a frame");

    // The api's NATS user reads the consumer's info and nothing else of
    // JetStream: no frames, no stream, no messages of the consumer.
    let api = connect_as(&api_nats).await;
    let info = api
        .request(
            format!(
                "$JS.API.CONSUMER.INFO.{}.{}",
                app.names.stream, app.names.consumer
            ),
            "".into(),
        )
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert!(
        info["ack_floor"]["stream_seq"].as_u64().unwrap() >= seq,
        "{info}"
    );
    let mut js = async_nats::jetstream::new(api.clone());
    js.set_timeout(Duration::from_millis(500));
    assert!(
        js.get_stream(&app.names.stream).await.is_err(),
        "the api read the stream's info"
    );
    let forged = async {
        js.publish(app.subject("acl"), frame.into())
            .await?
            .await
            .map_err(anyhow::Error::from)
    };
    assert!(forged.await.is_err(), "the api published a frame");
    let next = tokio::time::timeout(
        Duration::from_millis(500),
        api.request(
            format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                app.names.stream, app.names.consumer
            ),
            "1".into(),
        ),
    )
    .await;
    assert!(
        !matches!(next, Ok(Ok(_))),
        "the api pulled a message of the processors' consumer"
    );
}
