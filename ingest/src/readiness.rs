//! What ingest's `/readyz` checks: NATS connected, the event stream present,
//! and no shutdown under way.

use std::sync::atomic::Ordering;

use sessionfold_common::health::Readiness;
use sessionfold_common::settings::NatsSettings;

use crate::server::Ingest;

impl Ingest {
    /// The readiness of this ingest, whose stream is `nats.stream_name`.
    pub fn readiness(&self, nats: &NatsSettings) -> Readiness {
        let shared = self.shared.clone();
        Readiness::new()
            .unless_stopping(move || shared.shutting_down.load(Ordering::Relaxed))
            .nats(self.nats.clone())
            .stream(
                async_nats::jetstream::new(self.nats.clone()),
                nats.stream_name.clone(),
            )
    }
}
