//! The system under measurement: one nats-server and one redis-server
//! (RedisJSON) from the testkit, and the services as child processes of the
//! release `sessionfold` binary, each run with names (stream, consumer, key
//! prefix) of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use sessionfold_common::settings::NatsSettings;
use sessionfold_testkit::{
    BinaryDefault, JetStreamProbe, NatsOptions, NatsServer, RedisOptions, RedisServer, RunNames,
    ServiceLauncher, ServiceProcess, free_port, sessionfold_bin,
};
use tokio::time::Instant;

/// Redis persistence of the bench: the append-only file with one fsync per
/// second, what `docs/faults.md` recommends for deployments (the testkit's
/// default, `always`, is for tests that kill Redis).
pub const REDIS_ARGS: &[&str] = &["--appendfsync", "everysec"];

/// `<workspace>/.deps/bin/<name>`, when it exists.
pub fn deps_bin(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.deps/bin")
        .join(name);
    path.exists().then_some(path)
}

/// Fresh names for one run.
pub fn unique_names() -> RunNames {
    RunNames::unique("BENCH", "bench", "b")
}

/// The stream settings ingest and the processor use for `names`.
pub fn nats_settings(names: &RunNames, nats_url: &str) -> NatsSettings {
    NatsSettings {
        stream_name: names.stream.clone(),
        subject_prefix: names.subject_prefix.clone(),
        ..NatsSettings::local(nats_url)
    }
}

/// The servers, shared by every measurement.
pub struct Servers {
    pub nats: NatsServer,
    pub redis: RedisServer,
    launcher: ServiceLauncher,
    /// Set for every processor on top of its defaults.
    processor_env: std::sync::Mutex<Vec<(&'static str, String)>>,
}

/// A field of `/proc/<pid>/status` in kB.
pub fn proc_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no {field}"))
}

/// Total CPU time (user + system) a process used so far.
pub fn proc_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = ticks(11).zip(ticks(12)).context("unreadable /proc stat")?;
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Ok(Duration::from_millis((utime + stime) * 10))
}

/// CPU time of some processes over a stretch of time.
pub struct CpuMeter {
    processes: Vec<(String, u32, Duration)>,
}

impl CpuMeter {
    pub fn start(processes: &[(&str, u32)]) -> Self {
        Self {
            processes: processes
                .iter()
                .map(|(name, pid)| ((*name).to_owned(), *pid, proc_cpu(*pid).unwrap_or_default()))
                .collect(),
        }
    }

    /// CPU seconds each process used since [`CpuMeter::start`].
    pub fn stop(self) -> Vec<(String, f64)> {
        self.processes
            .into_iter()
            .map(|(name, pid, before)| {
                let after = proc_cpu(pid).unwrap_or_default();
                (name, after.saturating_sub(before).as_secs_f64())
            })
            .collect()
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

impl Servers {
    /// The shipped servers: JetStream with `sync_interval: always`, Valkey
    /// with [`REDIS_ARGS`].
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(NatsOptions::default(), RedisOptions::with_args(REDIS_ARGS))
    }

    /// Servers started as `nats` and `redis` say (for the side-by-side rows:
    /// another `sync_interval`, another Redis binary).
    pub fn start_with(nats: NatsOptions, redis: RedisOptions) -> anyhow::Result<Self> {
        // `SESSIONFOLD_BIN`, or `target/release/sessionfold` beside
        // `target/release/sessionfold-bench`.
        let bin = sessionfold_bin(BinaryDefault::BesideExecutable {
            how_to_build: "run `cargo build --release -p sessionfold` (or `make bench`)",
        })?;
        let nats = NatsServer::start_with(nats).context("starting nats-server")?;
        let redis = RedisServer::start_with(redis).context("starting redis-server")?;
        let launcher = ServiceLauncher::new(
            bin,
            "bench",
            vec![
                ("RUST_LOG", "info".to_owned()),
                ("LOG_FORMAT", "json".to_owned()),
            ],
        )?;
        Ok(Self {
            nats,
            redis,
            launcher,
            processor_env: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Environment every processor started from now on gets on top of its
    /// defaults (e.g. `REDIS_DURABILITY`).
    pub fn set_processor_env(&self, env: Vec<(&'static str, String)>) {
        *self.processor_env.lock().expect("not poisoned") = env;
    }

    /// A replica of the bench's Redis (its own server, `--replicaof`), for
    /// `REDIS_DURABILITY=replica`; it stays attached until dropped.
    pub fn start_redis_replica(&self) -> anyhow::Result<RedisServer> {
        let port = self.redis.port().to_string();
        let mut args: Vec<&str> = REDIS_ARGS.to_vec();
        args.extend(["--replicaof", "127.0.0.1", &port]);
        RedisServer::start_with(RedisOptions::with_args(&args)).context("starting a Redis replica")
    }

    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// The Redis server's name and version (`valkey 9.1.2`, `redis 7.0.15`).
    pub async fn redis_version(&self) -> anyhow::Result<String> {
        let mut redis = self.redis_connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut redis)
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        Ok(match field("valkey_version") {
            Some(v) => format!("valkey {v}"),
            None => format!("redis {}", field("redis_version").unwrap_or_default()),
        })
    }

    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    pub fn bin(&self) -> &Path {
        self.launcher.bin()
    }

    /// Keeps the service logs (prints where) instead of removing them.
    pub fn keep_logs(self) -> PathBuf {
        self.launcher.keep_logs()
    }

    fn nats_env(&self, names: &RunNames) -> Vec<(&'static str, String)> {
        let mut env = vec![("NATS_URL", self.nats_url())];
        env.extend(names.stream_env());
        env
    }

    /// `sessionfold ingest` on a free port, ready.
    pub async fn start_ingest(&self, names: &RunNames) -> anyhow::Result<ServiceProcess> {
        self.start_ingest_with(names, &[]).await
    }

    /// `sessionfold ingest` with `extra` on top of its defaults (e.g.
    /// `PUBLISH_BATCH_MAX_FRAMES`), on a free port, ready.
    pub async fn start_ingest_with(
        &self,
        names: &RunNames,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<ServiceProcess> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = self.nats_env(names);
        env.push(("INGEST_LISTEN", addr.to_string()));
        env.extend(extra.iter().cloned());
        let mut ingest = self.launcher.spawn("ingest", "ingest", addr, &env)?;
        ingest.wait_ready(READY_TIMEOUT).await?;
        Ok(ingest)
    }

    /// `replicas` × `sessionfold processor` on one durable consumer, ready.
    pub async fn start_processors(
        &self,
        names: &RunNames,
        replicas: usize,
    ) -> anyhow::Result<Vec<ServiceProcess>> {
        let mut processors = Vec::with_capacity(replicas);
        for slot in 0..replicas {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut env = self.nats_env(names);
            env.extend([
                ("PROCESSOR_LISTEN", addr.to_string()),
                ("REDIS_URL", self.redis_url()),
            ]);
            env.extend(names.processor_env());
            env.extend(
                self.processor_env
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .cloned(),
            );
            let name = format!("processor-{slot}");
            processors.push(self.launcher.spawn(&name, "processor", addr, &env)?);
        }
        for processor in &mut processors {
            processor.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(processors)
    }

    /// `sessionfold api` on a free port, ready.
    pub async fn start_api(&self, names: &RunNames) -> anyhow::Result<ServiceProcess> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let env = [
            ("API_LISTEN", addr.to_string()),
            ("REDIS_URL", self.redis_url()),
            ("KEY_PREFIX", names.key_prefix.clone()),
        ];
        let mut api = self.launcher.spawn("api", "api", addr, &env)?;
        api.wait_ready(READY_TIMEOUT).await?;
        Ok(api)
    }

    /// `sessionfold api` with live streams and `min_seq` reads: NATS, the
    /// run's stream and consumer (update notes on the default prefix, as
    /// [`Servers::start_processors`] sends them).
    pub async fn start_live_api(
        &self,
        names: &RunNames,
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<ServiceProcess> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut env = vec![
            ("API_LISTEN", addr.to_string()),
            ("REDIS_URL", self.redis_url()),
            ("NATS_URL", self.nats_url()),
        ];
        env.extend(names.stream_env());
        env.extend(names.processor_env());
        env.extend(extra.iter().cloned());
        let mut api = self.launcher.spawn("api", "api", addr, &env)?;
        api.wait_ready(READY_TIMEOUT).await?;
        Ok(api)
    }

    /// How far the processors of run `names` are, asked often enough to
    /// time the end of a run to about 10 ms.
    pub async fn probe(&self, names: &RunNames) -> anyhow::Result<JetStreamProbe> {
        let probe = JetStreamProbe::new(
            self.jetstream().await?,
            &names.stream,
            &names.consumer,
            &names.dead_stream,
        );
        Ok(probe.polling_every(Duration::from_millis(10)))
    }

    pub async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(self.nats_url())
            .await
            .context("connecting to NATS")?;
        Ok(jetstream::new(client))
    }

    /// A connection for the bench's own commands, with room for slow ones
    /// (`FLUSHALL` of a large data set, reading a large document).
    pub async fn redis_connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis_url())?;
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Deletes a run's streams and Redis keys, so runs do not pile up, and
    /// rewrites the (now empty) append-only file, so that no measurement
    /// pays for the rewrite of an earlier one's data.
    pub async fn clean(&self, names: &RunNames) -> anyhow::Result<()> {
        let js = self.jetstream().await?;
        for stream in [&names.stream, &names.dead_stream] {
            let _ = js.delete_stream(stream).await;
        }
        let mut redis = self.redis_connection().await?;
        redis::cmd("FLUSHALL").query_async::<()>(&mut redis).await?;
        // BGREWRITEAOF is refused while a rewrite runs: wait, rewrite, wait.
        wait_aof_rewrite(&mut redis).await?;
        redis::cmd("BGREWRITEAOF")
            .query_async::<()>(&mut redis)
            .await?;
        wait_aof_rewrite(&mut redis).await
    }
}

/// Waits until Redis runs no AOF rewrite and has none scheduled.
async fn wait_aof_rewrite(redis: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(redis)
            .await?;
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_rewrite_scheduled:0") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("an AOF rewrite still runs after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
