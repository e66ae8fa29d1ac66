//! The `sessionfold-processor` binary: flags, tracing, signals; the service
//! is the library's [`sessionfold_processor::serve`].

use clap::Parser;
use sessionfold_common::{shutdown, telemetry};
use sessionfold_processor::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let config = Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    sessionfold_processor::serve(config, listener, shutdown::token_on_signal()).await
}
