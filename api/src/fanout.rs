//! A fan-out hub: for each topic, one feed produces values and every watcher
//! of the topic receives them, from buffers of bounded size.
//!
//! The first watcher of a topic starts its feed (a task given a
//! [`Publisher`]); the last one to leave stops it. A new watcher first gets
//! the topic's latest value, then every value published after it, with
//! nothing missed in between. Each watcher may fall at most `buffer` values
//! behind: past that it is told [`Next::Lagged`] and is expected to leave,
//! so a watcher that does not read costs at most the buffer, never a
//! growing queue. Values are shared between watchers (cloning a `T` should
//! be cheap: `Bytes`, `Arc`), so a topic's memory does not grow with its
//! number of watchers.
//!
//! The hub does not know what its values mean: live documents use it today
//! ([`crate::live`]), and a feed of changes can use it the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::task::AbortHandle;

/// Topics and their feeds.
pub struct Hub<T> {
    topics: Mutex<HashMap<String, Arc<Topic<T>>>>,
    buffer: usize,
}

struct Topic<T> {
    /// `None` once the feed has ended: receivers then see the end.
    sender: Mutex<Option<broadcast::Sender<T>>>,
    /// The last value published, for watchers that join later. Guarded
    /// together with sending, so a joining watcher sees each value exactly
    /// once: either here or from its receiver.
    latest: Mutex<Option<T>>,
    watchers: AtomicUsize,
    feed: Mutex<Option<AbortHandle>>,
}

/// What a feed uses to publish to its topic's watchers.
pub struct Publisher<T> {
    topic: Arc<Topic<T>>,
}

impl<T: Clone> Publisher<T> {
    /// Sends `value` to every watcher and keeps it for later ones.
    pub fn publish(&self, value: T) {
        let mut latest = self.topic.latest.lock().expect("topic lock");
        if let Some(sender) = &*self.topic.sender.lock().expect("topic lock") {
            // No receiver is not an error: watchers come and go.
            let _ = sender.send(value.clone());
        }
        *latest = Some(value);
    }

    /// The value published last, if any.
    pub fn latest(&self) -> Option<T> {
        self.topic.latest.lock().expect("topic lock").clone()
    }
}

/// What a watcher gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    Value(T),
    /// The watcher fell more than the buffer behind; values were lost to it.
    Lagged,
    /// The feed ended and every value it published has been received.
    Ended,
}

/// One watcher of one topic; leaving is dropping it.
pub struct Watch<T: Clone + Send + Sync + 'static> {
    hub: Arc<Hub<T>>,
    name: String,
    topic: Arc<Topic<T>>,
    receiver: Option<broadcast::Receiver<T>>,
    first: Option<T>,
}

impl<T: Clone + Send + Sync + 'static> Hub<T> {
    /// A hub whose watchers may each fall `buffer` values behind.
    pub fn new(buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            topics: Mutex::new(HashMap::new()),
            buffer: buffer.max(1),
        })
    }

    /// Topics with a running feed or watchers.
    pub fn topics(&self) -> usize {
        self.topics.lock().expect("hub lock").len()
    }

    /// Watchers of `name` now.
    pub fn watchers(&self, name: &str) -> usize {
        self.topics
            .lock()
            .expect("hub lock")
            .get(name)
            .map_or(0, |topic| topic.watchers.load(Ordering::Relaxed))
    }

    /// Watches topic `name`; when it has no feed yet, `feed` starts one.
    pub fn watch<F, Fut>(self: &Arc<Self>, name: &str, feed: F) -> Watch<T>
    where
        F: FnOnce(Publisher<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut topics = self.topics.lock().expect("hub lock");
        let topic = match topics.get(name) {
            Some(topic) => topic.clone(),
            None => {
                let (sender, _) = broadcast::channel(self.buffer);
                let topic = Arc::new(Topic {
                    sender: Mutex::new(Some(sender)),
                    latest: Mutex::new(None),
                    watchers: AtomicUsize::new(0),
                    feed: Mutex::new(None),
                });
                let run = feed(Publisher {
                    topic: topic.clone(),
                });
                let hub = Arc::downgrade(self);
                let ended = topic.clone();
                let owner = name.to_owned();
                let task = tokio::spawn(async move {
                    run.await;
                    // The feed stopped by itself: its watchers see the end
                    // once they have read what it published, and the next
                    // watcher starts a new feed.
                    ended.sender.lock().expect("topic lock").take();
                    if let Some(hub) = hub.upgrade() {
                        hub.remove_if_same(&owner, &ended);
                    }
                });
                *topic.feed.lock().expect("topic lock") = Some(task.abort_handle());
                topics.insert(name.to_owned(), topic.clone());
                topic
            }
        };
        topic.watchers.fetch_add(1, Ordering::Relaxed);
        let latest = topic.latest.lock().expect("topic lock");
        let receiver = topic
            .sender
            .lock()
            .expect("topic lock")
            .as_ref()
            .map(broadcast::Sender::subscribe);
        let first = latest.clone();
        drop(latest);
        drop(topics);
        Watch {
            hub: self.clone(),
            name: name.to_owned(),
            topic,
            receiver,
            first,
        }
    }

    fn remove_if_same(&self, name: &str, topic: &Arc<Topic<T>>) {
        let mut topics = self.topics.lock().expect("hub lock");
        if topics
            .get(name)
            .is_some_and(|current| Arc::ptr_eq(current, topic))
        {
            topics.remove(name);
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Watch<T> {
    /// The next value: first the topic's latest (if there was one when this
    /// watcher joined), then each new one.
    pub async fn next(&mut self) -> Next<T> {
        if let Some(first) = self.first.take() {
            return Next::Value(first);
        }
        let Some(receiver) = &mut self.receiver else {
            return Next::Ended;
        };
        match receiver.recv().await {
            Ok(value) => Next::Value(value),
            Err(broadcast::error::RecvError::Lagged(_)) => Next::Lagged,
            Err(broadcast::error::RecvError::Closed) => Next::Ended,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Drop for Watch<T> {
    fn drop(&mut self) {
        let mut topics = self.hub.topics.lock().expect("hub lock");
        if self.topic.watchers.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Some(feed) = self.topic.feed.lock().expect("topic lock").take() {
                feed.abort();
            }
            if topics
                .get(&self.name)
                .is_some_and(|current| Arc::ptr_eq(current, &self.topic))
            {
                topics.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A feed that publishes what it is sent, so a test drives it.
    fn driven(hub: &Arc<Hub<u32>>, name: &str) -> (Watch<u32>, tokio::sync::mpsc::Sender<u32>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(64);
        let watch = hub.watch(name, move |publisher| async move {
            while let Some(value) = rx.recv().await {
                publisher.publish(value);
            }
        });
        (watch, tx)
    }

    async fn settle() {
        // Lets the feed task run; values then wait in the watchers' buffers.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn every_watcher_gets_every_value_from_one_feed() {
        let hub = Hub::new(8);
        let (mut first, tx) = driven(&hub, "t");
        let mut starts = 0;
        let mut second = hub.watch("t", |_| {
            starts += 1;
            async {}
        });
        assert_eq!(starts, 0, "a topic with a feed starts no other");
        assert_eq!(hub.watchers("t"), 2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        for watch in [&mut first, &mut second] {
            assert_eq!(watch.next().await, Next::Value(1));
            assert_eq!(watch.next().await, Next::Value(2));
        }
    }

    #[tokio::test]
    async fn a_late_watcher_starts_from_the_latest_value() {
        let hub = Hub::new(8);
        let (mut early, tx) = driven(&hub, "t");
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(early.next().await, Next::Value(1));
        assert_eq!(early.next().await, Next::Value(2));
        let mut late = hub.watch("t", |_| async {});
        tx.send(3).await.unwrap();
        assert_eq!(late.next().await, Next::Value(2));
        assert_eq!(late.next().await, Next::Value(3));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_a_buffer_behind_is_told_it_lagged() {
        let hub = Hub::new(2);
        let (mut slow, tx) = driven(&hub, "t");
        let mut keeping_up = hub.watch("t", |_| async {});
        for value in 1..=5 {
            tx.send(value).await.unwrap();
            settle().await;
            assert_eq!(keeping_up.next().await, Next::Value(value));
        }
        assert_eq!(slow.next().await, Next::Lagged);
    }

    #[tokio::test]
    async fn the_last_watcher_leaving_stops_the_feed_and_forgets_the_topic() {
        let hub = Hub::new(2);
        let (first, tx) = driven(&hub, "t");
        let second = hub.watch("t", |_| async {});
        drop(first);
        assert_eq!(hub.topics(), 1);
        drop(second);
        assert_eq!(hub.topics(), 0);
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the feed was stopped and dropped its receiver");
    }

    #[tokio::test]
    async fn a_feed_that_ends_ends_its_watchers_after_its_last_value() {
        let hub = Hub::new(4);
        let mut watch = hub.watch("t", |publisher| async move {
            publisher.publish(7);
        });
        assert_eq!(watch.next().await, Next::Value(7));
        assert_eq!(watch.next().await, Next::Ended);
        // A new watcher starts a new feed.
        let mut started = false;
        let _again = hub.watch("t", |_| {
            started = true;
            async {}
        });
        assert!(started);
    }
}
