//! The `sessionfold-ingest` binary: flags, tracing, signals; the service is
//! the library's [`sessionfold_ingest::serve`].

use clap::Parser;
use sessionfold_common::{shutdown, telemetry};
use sessionfold_ingest::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    sessionfold_ingest::serve(config, listener, shutdown::token_on_signal()).await
}
