//! Automatic repair and the durability modes against a real nats-server and
//! a real Redis/Valkey with RedisJSON: the processor runs in-process, frames
//! are published straight to JetStream (what ingest stores), and Redis
//! loses data behind the processor's back — restarted from an older copy of
//! its files, flushed. Every document must come back to the reference fold
//! of every stored frame, with no operator action.

#![allow(
    clippy::unwrap_used,
    reason = "in a test, an unwrap that fails is the failure"
)]

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use sessionfold_common::settings::RedisSettings;
use sessionfold_core::{Delivery, Frame, Limits, SessionId, fold};
use sessionfold_processor::Processor;
use sessionfold_processor::durability::Durability;
use sessionfold_processor::repair::single_marker_key;
use sessionfold_testkit::{
    JetStreamProbe, NatsServer, RedisServer, RunNames, eventually, init_test_tracing,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SESSIONS: usize = 12;
const DEADLINE: Duration = Duration::from_secs(60);

/// A processor in-process against its own servers, and the frames it was
/// given.
struct Rig {
    nats: NatsServer,
    redis: RedisServer,
    names: RunNames,
    js: jetstream::Context,
    /// Every stored frame per session: (stream sequence, text).
    frames: Vec<Vec<(u64, String)>>,
    shutdown: CancellationToken,
    processor: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Rig {
    async fn start(redis: RedisServer, durability: Durability) -> Self {
        init_test_tracing();
        let nats = NatsServer::start().expect("nats-server");
        let names = RunNames::unique("REPAIR", "repair", "rp");
        let client = async_nats::connect(nats.url()).await.expect("NATS");
        let mut rig = Self {
            js: jetstream::new(client),
            nats,
            redis,
            names,
            frames: vec![Vec::new(); SESSIONS],
            shutdown: CancellationToken::new(),
            processor: None,
        };
        rig.start_processor(durability).await;
        rig
    }

    fn config(&self, durability: Durability) -> sessionfold_processor::Config {
        let mut config = sessionfold_processor::Config::local(self.nats.url(), self.redis.url());
        config.nats.stream_name = self.names.stream.clone();
        config.nats.subject_prefix = self.names.subject_prefix.clone();
        config.redis = RedisSettings {
            key_prefix: self.names.key_prefix.clone(),
            ..RedisSettings::local(self.redis.url())
        };
        config.worker.consumer_name = self.names.consumer.clone();
        config.worker.dead_letter_stream = self.names.dead_stream.clone();
        config.worker.dead_letter_subject_prefix = self.names.dead_subject_prefix.clone();
        config.worker.batch_size = 16;
        config.sink.redis_durability = durability;
        config.sink.redis_durability_timeout_ms = 200;
        config.sink.repair_check_interval_ms = 100;
        config
    }

    async fn start_processor(&mut self, durability: Durability) {
        let processor = Processor::build(self.config(durability))
            .await
            .expect("the processor starts");
        self.processor = Some(tokio::spawn(processor.run(self.shutdown.clone())));
    }

    fn probe(&self) -> JetStreamProbe {
        JetStreamProbe::new(
            self.js.clone(),
            &self.names.stream,
            &self.names.consumer,
            &self.names.dead_stream,
        )
    }

    fn session(index: usize) -> SessionId {
        SessionId::parse(&format!("repair-{index}")).expect("a valid id")
    }

    /// Publishes `rounds` frames to every session; some events repeat
    /// earlier ones and some arrive out of order, as producers send them.
    async fn publish(&mut self, round: usize) {
        for index in 0..SESSIONS {
            let session = Self::session(index);
            let base = (round * 10) as u64;
            let mut events = vec![
                serde_json::json!({"type": "EVENT", "timestamp": base + 5, "name": format!("r{round}-a")}),
                serde_json::json!({"type": "EVENT", "timestamp": base + 1, "name": format!("r{round}-b"), "n": index}),
                serde_json::json!({"type": "EVENT", "timestamp": 3, "id": format!("early-{}", round % 3)}),
            ];
            if round == 0 {
                events.push(serde_json::json!({"type": "SESSION_START", "timestamp": 0}));
            }
            let text = serde_json::Value::Array(events).to_string();
            let subject = format!("{}.{}", self.names.subject_prefix, session.token());
            let ack = self
                .js
                .publish(subject, text.clone().into())
                .await
                .expect("publish")
                .await
                .expect("stored");
            self.frames[index].push((ack.sequence, text));
        }
    }

    fn expected(&self, index: usize) -> String {
        let session = Self::session(index);
        let deliveries: Vec<Delivery> = self.frames[index]
            .iter()
            .map(|(sequence, text)| Delivery {
                stream_sequence: *sequence,
                events: Frame::parse(text, &session, &Limits::default())
                    .expect("a valid frame")
                    .events,
            })
            .collect();
        serde_json::to_string(&fold(session.as_str(), &deliveries)).expect("JSON")
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis")
    }

    async fn documents(&self) -> Vec<Option<String>> {
        let mut redis = self.redis().await;
        let mut documents = Vec::new();
        for index in 0..SESSIONS {
            let key = format!(
                "{}doc:{{{}}}",
                self.names.key_prefix,
                Self::session(index).token()
            );
            let document: Option<String> = redis::cmd("JSON.GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .ok()
                .flatten();
            documents.push(document);
        }
        documents
    }

    /// Waits until every document equals the reference fold of its frames.
    async fn documents_converge(&self, what: &str) {
        let expected: Vec<Option<String>> = (0..SESSIONS).map(|i| Some(self.expected(i))).collect();
        eventually(what, DEADLINE, || {
            let expected = expected.clone();
            async move { (self.documents().await == expected).then_some(()) }
        })
        .await;
    }

    /// Waits until the processor has acked everything and the node's
    /// applied floor has reached `sequence`.
    async fn floor_reaches(&self, sequence: u64) {
        self.probe()
            .wait_drained(DEADLINE)
            .await
            .expect("the consumer drains");
        let key = single_marker_key(&self.names.key_prefix);
        eventually("the applied floor advances", DEADLINE, || {
            let key = key.clone();
            async move {
                let mut redis = self.redis().await;
                let floor: Option<u64> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("floor")
                    .query_async(&mut redis)
                    .await
                    .ok()
                    .flatten();
                floor.filter(|floor| *floor >= sequence).map(|_| ())
            }
        })
        .await;
    }

    fn last_sequence(&self) -> u64 {
        self.frames
            .iter()
            .flatten()
            .map(|(sequence, _)| *sequence)
            .max()
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(processor) = self.processor.take() {
            processor
                .await
                .expect("the processor task")
                .expect("the processor");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn replace_dir(dir: &Path, with: &Path) {
    std::fs::remove_dir_all(dir).expect("rm");
    copy_dir(with, dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_older_files_is_repaired_without_an_operator() {
    let mut rig = Rig::start(RedisServer::start().expect("redis"), Durability::None).await;
    for round in 0..3 {
        rig.publish(round).await;
    }
    rig.floor_reaches(rig.last_sequence()).await;
    rig.documents_converge("the first frames are applied").await;

    // The files as they are now (appendfsync always: consistent at rest).
    let older = tempfile::tempdir().expect("tempdir");
    copy_dir(rig.redis.data_dir(), older.path());

    for round in 3..7 {
        rig.publish(round).await;
    }
    rig.floor_reaches(rig.last_sequence()).await;
    rig.documents_converge("every frame is applied").await;

    // Redis dies and comes back from the older files: the later frames'
    // writes are gone although JetStream has acked them.
    rig.redis.kill();
    replace_dir(rig.redis.data_dir(), older.path());
    rig.redis.restart().expect("redis restarts");
    rig.documents_converge("documents are repaired after a restart from older files")
        .await;

    // And it keeps going: new frames after the repair.
    rig.publish(7).await;
    rig.documents_converge("frames after the repair are applied")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_rebuilt_from_the_stream() {
    let mut rig = Rig::start(RedisServer::start().expect("redis"), Durability::None).await;
    for round in 0..4 {
        rig.publish(round).await;
    }
    rig.floor_reaches(rig.last_sequence()).await;
    rig.documents_converge("the frames are applied").await;
    let mut redis = rig.redis().await;
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut redis)
        .await
        .expect("FLUSHALL");
    rig.documents_converge("documents are rebuilt after FLUSHALL")
        .await;
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_durability_acks_after_waitaof_and_needs_an_append_only_file() {
    let mut rig = Rig::start(RedisServer::start().expect("redis"), Durability::Fsync).await;
    for round in 0..3 {
        rig.publish(round).await;
    }
    rig.probe()
        .wait_drained(DEADLINE)
        .await
        .expect("the consumer drains");
    rig.documents_converge("frames are applied with fsync durability")
        .await;
    let mut redis = rig.redis().await;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .expect("INFO");
    assert!(stats.contains("cmdstat_waitaof:"), "{stats}");

    // A server without an append-only file cannot give the guarantee: the
    // processor refuses to start rather than wait forever.
    let no_aof = RedisServer::start_with_args(&["--appendonly", "no"]).expect("redis");
    let mut config = rig.config(Durability::Fsync);
    config.redis = RedisSettings::local(no_aof.url());
    let err = Processor::build(config)
        .await
        .err()
        .expect("refused without appendonly");
    assert!(format!("{err:#}").contains("appendonly"), "{err:#}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_durability_holds_acks_while_the_replica_lags() {
    let primary = RedisServer::start().expect("redis");
    let replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .expect("replica");
    let mut rig = Rig::start(primary, Durability::Replica).await;
    let replica_client = redis::Client::open(replica.url()).expect("URL");
    let mut replica_redis = replica_client
        .get_multiplexed_async_connection()
        .await
        .expect("replica");
    eventually("the replica is in sync", DEADLINE, || {
        let mut replica_redis = replica_redis.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut replica_redis)
                .await
                .ok()?;
            info.contains("master_link_status:up").then_some(())
        }
    })
    .await;
    rig.publish(0).await;
    rig.probe()
        .wait_drained(DEADLINE)
        .await
        .expect("acked with a replica in sync");

    // The replica stops processing for a while: nothing may be acked until
    // it has the writes. (The probe connects first: a sleeping server takes
    // no new connections either.)
    let probe = replica_client
        .get_multiplexed_async_connection()
        .await
        .expect("replica");
    let sleeping = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(4)
            .query_async::<()>(&mut replica_redis)
            .await
    });
    // DEBUG SLEEP blocks the replica as soon as it runs; give the command a
    // moment to arrive by waiting until the replica stops answering others.
    eventually("the replica is asleep", Duration::from_secs(5), || {
        let probe = probe.clone();
        async move { replica_asleep(&probe).await.then_some(()) }
    })
    .await;
    let mut primary = rig.redis().await;
    let waits_before = wait_calls(&mut primary).await;
    rig.publish(1).await;
    eventually(
        "the processor waits for the replica",
        Duration::from_secs(5),
        || {
            let mut primary = primary.clone();
            async move { (wait_calls(&mut primary).await > waits_before).then_some(()) }
        },
    )
    .await;
    let (pending, ack_pending) = rig.probe().consumer_state().await.expect("consumer");
    assert!(
        replica_asleep(&probe).await,
        "the replica woke up too early for this check"
    );
    assert!(
        pending + ack_pending as u64 > 0,
        "frames were acked while the only replica could not have them"
    );
    // The client gives up on DEBUG SLEEP's answer before the server does;
    // the sleep itself goes on.
    let _ = sleeping.await;
    rig.probe()
        .wait_drained(DEADLINE)
        .await
        .expect("acked once the replica caught up");
    rig.documents_converge("frames are applied with replica durability")
        .await;
    drop(replica);
    rig.stop().await;
}

/// How often the server has run `WAIT`.
async fn wait_calls(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap_or_default();
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_wait:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Whether the server takes longer than 200 ms to answer a `PING`.
async fn replica_asleep(connection: &redis::aio::MultiplexedConnection) -> bool {
    let mut connection = connection.clone();
    !matches!(
        tokio::time::timeout(
            Duration::from_millis(200),
            redis::cmd("PING").query_async::<String>(&mut connection),
        )
        .await,
        Ok(Ok(_))
    )
}
