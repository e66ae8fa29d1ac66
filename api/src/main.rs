//! The `sessionfold-api` binary: flags, tracing, signals; the service is the
//! library's [`sessionfold_api::serve`].

use clap::Parser;
use sessionfold_api::Config;
use sessionfold_common::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    sessionfold_api::serve(config, listener, shutdown::token_on_signal()).await
}
