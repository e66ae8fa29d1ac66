//! What the processor's `/readyz` checks: NATS connected, Redis answering,
//! the event stream and the durable consumer present, the pull subscription
//! running, and no shutdown under way.

use std::sync::atomic::Ordering;

use sessionfold_common::health::Readiness;

use crate::worker::Processor;

impl Processor {
    /// The readiness of this processor.
    pub fn readiness(&self) -> Readiness {
        let stopping = self.stopping.clone();
        let consuming = self.consuming.clone();
        let stream = self.config.nats.stream_name.clone();
        Readiness::new()
            .unless_stopping(move || stopping.load(Ordering::Relaxed))
            .nats(self.nats.clone())
            .redis(self.store.connection())
            .stream(self.js.clone(), stream.clone())
            .consumer(
                self.js.clone(),
                stream,
                self.config.worker.consumer_name.clone(),
            )
            .check("consuming", move || {
                let consuming = consuming.load(Ordering::Relaxed);
                async move {
                    if consuming {
                        Ok(())
                    } else {
                        Err("the pull subscription is not running".to_owned())
                    }
                }
            })
    }
}
