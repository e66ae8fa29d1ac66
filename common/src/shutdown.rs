//! The signal that starts a graceful stop.

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown signal received");
}

/// A cancellation token cancelled by [`signal`].
pub fn token_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal().await;
        cancel.cancel();
    });
    token
}

/// Waits for `signal`, turns readiness off with `begin`, then waits out the
/// grace period. Services stop taking work when this returns.
pub async fn after_grace(
    signal: tokio_util::sync::CancellationToken,
    grace: std::time::Duration,
    begin: impl FnOnce(),
) {
    signal.cancelled().await;
    begin();
    if !grace.is_zero() {
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "readiness off; draining after the grace period"
        );
        tokio::time::sleep(grace).await;
    }
}
