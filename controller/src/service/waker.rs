//! The dispatcher's wake-up: cheap to clone, shared by whoever makes work runnable (queueing, an agent
//! connecting, an attempt ending).

use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes the dispatcher (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct DispatchWaker(Arc<Notify>);

impl DispatchWaker {
    /// Ask for a dispatch round now.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for the next wake-up.
    pub async fn notified(&self) {
        self.0.notified().await;
    }
}
