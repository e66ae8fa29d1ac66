//! What the api's `/readyz` checks: Redis answers, and no shutdown is under
//! way.

use std::sync::atomic::Ordering;

use sessionfold_common::health::Readiness;

use crate::server::Api;

impl Api {
    /// The readiness of this api.
    pub fn readiness(&self) -> Readiness {
        let shared = self.shared.clone();
        Readiness::new()
            .unless_stopping(move || shared.stopping.load(Ordering::Relaxed))
            .redis(self.shared.redis.clone())
    }
}
