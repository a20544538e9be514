//! `/api/v1/events`: live changes as Server-Sent Events.
//!
//! One set of NATS subscriptions per gateway (request events, release status, heartbeats,
//! chart announcements), fanned out to every connected page, so a hundred open pages cost
//! the hub no more than one. Event names: `request`, `release`, `cluster`, `chart`; a client
//! that fell behind gets `lagged` and should re-read the lists.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use optikon_client::{Client, LiveEvent};
use optikon_core::message::Timestamp;
use optikon_runtime::shutdown::Shutdown;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::Gateway;
use crate::clusters::ClusterStatus;
use crate::releases::RequestResult;

/// Events buffered per client before it counts as lagging.
const BUFFER: usize = 1024;

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Event>,
}

impl EventHub {
    /// Subscribes to the live subjects and forwards until `shutdown`, re-subscribing if the
    /// subscription ends.
    pub fn start(client: Client, shutdown: Shutdown) -> Self {
        let (sender, _) = broadcast::channel(BUFFER);
        let hub = EventHub { sender };
        let forward = hub.clone();
        tokio::spawn(async move {
            while !shutdown.is_triggered() {
                match client.live_events().await {
                    Ok(events) => {
                        let mut events = std::pin::pin!(events);
                        loop {
                            tokio::select! {
                                event = events.next() => match event {
                                    Some(event) => forward.publish(&event),
                                    None => break,
                                },
                                _ = shutdown.wait() => return,
                            }
                        }
                        tracing::warn!("live event subscription ended; subscribing again");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe to live events; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
        hub
    }

    fn publish(&self, event: &LiveEvent) {
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(to_sse(event));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

/// A heartbeat as a cluster update: the cluster's name plus [`ClusterStatus`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterUpdate {
    pub name: String,
    #[serde(flatten)]
    pub status: ClusterStatus,
}

pub fn to_sse(event: &LiveEvent) -> Event {
    let (name, data) = match event {
        LiveEvent::Request(status) => (
            "request",
            serde_json::to_string(&RequestResult::from_status(status)),
        ),
        LiveEvent::Release(status) => ("release", serde_json::to_string(status)),
        LiveEvent::ChartIngested(entry) => ("chart", serde_json::to_string(entry)),
        LiveEvent::Heartbeat(heartbeat) => {
            let update = ClusterUpdate {
                name: heartbeat.cluster.clone(),
                status: ClusterStatus::from_heartbeat(heartbeat, Timestamp::now()),
            };
            ("cluster", serde_json::to_string(&update))
        }
    };
    Event::default()
        .event(name)
        .data(data.unwrap_or_else(|_| "{}".to_owned()))
}

pub async fn stream(
    State(gateway): State<Gateway>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = gateway.events.subscribe();
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Ok(event) => Some((event, receiver)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let event = Event::default().event("lagged").data(missed.to_string());
                Some((event, receiver))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    });
    // A first event at once, so a client knows it is connected (and proxies flush).
    let hello = futures::stream::once(async { Event::default().event("hello").data("{}") });
    let shutdown = gateway.shutdown.clone();
    let events = hello
        .chain(events)
        .take_until(async move { shutdown.wait().await })
        .map(Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
