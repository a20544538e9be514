//! Drift correction's eyes: one metadata watch per resource type of the objects helm manages
//! on the cluster (label `app.kubernetes.io/managed-by=Helm`, which every object of a release
//! carries). A drift pass then knows each object's `resourceVersion` without asking the API
//! server for it, and hears of an edit or a delete as it happens instead of at its next pass.
//!
//! The watches are started the first time a drift pass meets an object of their type, and
//! run until the executor stops; kube-runtime's watcher lists again (with backoff) after an
//! error, and until that listing is complete the pass asks the API server as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use super::objects::{MANAGED_BY_LABEL, RELEASE_NAME_ANNOTATION, RELEASE_NAMESPACE_ANNOTATION};

/// A release one of whose objects changed: (namespace, release).
pub type Changed = (String, String);

/// What the watches last said, shared with their tasks.
#[derive(Default)]
pub(crate) struct Watches {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Per resource type (`group/plural`): whether its listing is complete, and each
    /// object's `resourceVersion` by [`object_key`].
    resources: HashMap<String, Resource>,
    /// Where changes are told, once someone listens.
    changes: Option<mpsc::UnboundedSender<Changed>>,
}

#[derive(Default)]
struct Resource {
    listed: bool,
    versions: HashMap<String, String>,
}

/// The key drift correction files an object under: `group/plural/namespace/name`.
pub(crate) fn object_key(resource: &ApiResource, namespace: Option<&str>, name: &str) -> String {
    format!(
        "{}/{}/{}/{name}",
        resource.group,
        resource.plural,
        namespace.unwrap_or_default()
    )
}

fn resource_key(resource: &ApiResource) -> String {
    format!("{}/{}", resource.group, resource.plural)
}

impl Watches {
    /// Changes from now on: the releases whose objects were edited or deleted.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<Changed> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock().changes = Some(sender);
        receiver
    }

    /// Starts watching `resource` unless that runs already.
    pub fn ensure(&self, client: &kube::Client, resource: &ApiResource) {
        let key = resource_key(resource);
        {
            let mut state = self.lock();
            if state.resources.contains_key(&key) {
                return;
            }
            state.resources.insert(key.clone(), Resource::default());
        }
        tracing::info!(resource = %key, "watching helm-managed objects for drift");
        tokio::spawn(watch(
            client.clone(),
            resource.clone(),
            key,
            self.state.clone(),
        ));
    }

    /// The object's `resourceVersion` as the watch last saw it: `Some(None)` if the watch
    /// knows it is not there, `None` if the watch cannot say (not listed yet, or broken).
    pub fn version(&self, resource: &ApiResource, key: &str) -> Option<Option<String>> {
        let state = self.lock();
        let watched = state.resources.get(&resource_key(resource))?;
        watched.listed.then(|| watched.versions.get(key).cloned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Follows one resource type until the executor stops.
async fn watch(client: kube::Client, resource: ApiResource, key: String, state: Arc<Mutex<State>>) {
    // Metadata only: the watch never carries the objects' specs.
    let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client, &resource);
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}=Helm"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: HashMap<String, String> = HashMap::new();
    let lock = || state.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(object)) => {
                if let Some(version) = object.metadata.resource_version.clone() {
                    listing.insert(key_of(&resource, &object), version);
                }
            }
            Ok(Event::InitDone) => {
                let mut state = lock();
                let watched = state.resources.entry(key.clone()).or_default();
                watched.versions = std::mem::take(&mut listing);
                watched.listed = true;
            }
            Ok(Event::Apply(object)) => {
                let mut state = lock();
                let object_key = key_of(&resource, &object);
                let watched = state.resources.entry(key.clone()).or_default();
                match object.metadata.resource_version.clone() {
                    Some(version) => watched.versions.insert(object_key, version),
                    None => watched.versions.remove(&object_key),
                };
                tell(&state, &object);
            }
            Ok(Event::Delete(object)) => {
                let mut state = lock();
                let object_key = key_of(&resource, &object);
                if let Some(watched) = state.resources.get_mut(&key) {
                    watched.versions.remove(&object_key);
                }
                tell(&state, &object);
            }
            Err(error) => {
                // Until the watcher has listed again, passes ask the API server.
                tracing::warn!(resource = %key, %error, "drift watch interrupted; relisting");
                if let Some(watched) = lock().resources.get_mut(&key) {
                    watched.listed = false;
                }
            }
        }
    }
}

fn key_of(resource: &ApiResource, object: &PartialObjectMeta<DynamicObject>) -> String {
    object_key(
        resource,
        object.metadata.namespace.as_deref(),
        object.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Tells the listener which release the changed object belongs to (helm's annotations).
fn tell(state: &State, object: &PartialObjectMeta<DynamicObject>) {
    let annotations = object.metadata.annotations.as_ref();
    let owner = annotations.and_then(|a| {
        Some((
            a.get(RELEASE_NAMESPACE_ANNOTATION)?.clone(),
            a.get(RELEASE_NAME_ANNOTATION)?.clone(),
        ))
    });
    if let (Some(owner), Some(changes)) = (owner, &state.changes) {
        let _ = changes.send(owner);
    }
}
