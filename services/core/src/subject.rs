//! Names of every NATS subject, stream, KV bucket and object store Optikon uses.
//!
//! One place, so that the services, the CLI, the docs and the permissions in `nats/` agree.
//! Subject tokens come from cluster, namespace and release names; release names may contain
//! dots, which NATS reads as token separators, so tokens are escaped with [`token`].

/// JetStream domain of the hub.
pub const HUB_DOMAIN: &str = "hub";

/// Users publish release requests here (JetStream; the `RELEASE_REQUESTS` stream stores them).
pub const RELEASE_REQUEST: &str = "optikon.release.request";
pub const RELEASE_REQUESTS_STREAM: &str = "RELEASE_REQUESTS";

/// Request/reply: push a chart (reply: `Reply<ChartIndexEntry>`).
pub const CHART_PUSH: &str = "optikon.api.chart.push";
/// Request/reply: an edge announces itself on `optikon.api.cluster.register.<cluster>`
/// (reply: `Reply<ClusterRecord>`). The cluster is the subject's last token, which the
/// hub's permissions let only that cluster's own identity publish; see [`cluster_register`].
pub const CLUSTER_REGISTER_PREFIX: &str = "optikon.api.cluster.register";
/// Request/reply: an edge fetches a chart archive its own desired state names, on
/// `optikon.api.chart.fetch.<cluster>` (see [`chart_fetch`]); chart-ingest answers.
pub const CHART_FETCH_PREFIX: &str = "optikon.api.chart.fetch";

/// Header on a chart push naming an object in [`UPLOADS_BUCKET`] that holds the archive.
pub const HEADER_UPLOAD: &str = "Optikon-Upload";
/// Header on a chart push: replace a stored chart of the same name and version.
pub const HEADER_FORCE: &str = "Optikon-Force";
/// Header on a registration from a site that may have been away (its prober just started,
/// or its link just came back): the hub checks whether commands for it were dropped.
pub const HEADER_RETURNING: &str = "Optikon-Returning";

/// Hub → edge commands. At the hub, `CMD` holds every cluster's commands on one subject per
/// cluster, [`cluster_commands`]; each cluster pulls its own through the hub's durable
/// consumer [`edge_consumer`] and stores them at the edge in [`cmd_local_stream`], one
/// subject per release ([`command`]).
pub const CMD_STREAM: &str = "CMD";
pub const CMD_PREFIX: &str = "optikon.cmd";

/// Edge → hub release status: `optikon.status.<cluster>.release.<namespace>.<release>`,
/// stored at the hub in [`STATUS_HUB_STREAM`]. At the edge the executor first stores each
/// status in the cluster's outbox ([`status_stream`], subjects [`OUTBOX_PREFIX`]), and the
/// site's uplink forwards it to the hub whenever the link is up.
pub const STATUS_PREFIX: &str = "optikon.status";
/// The hub's store of every edge's release status.
pub const STATUS_HUB_STREAM: &str = "STATUS_HUB";
/// Edge-local outbox of release status: `optikon.outbox.<cluster>.release.<ns>.<release>`.
/// A subject of its own, never permitted over a leaf link: stored once at the edge, then
/// forwarded under [`STATUS_PREFIX`].
pub const OUTBOX_PREFIX: &str = "optikon.outbox";
/// Heartbeats, one KV entry per cluster, written by the edge itself (key: the cluster).
/// Apart from the registry, so a heartbeat costs the hub one small store and nothing else.
pub const HEARTBEATS_BUCKET: &str = "heartbeats";
/// The Services each site runs with an address outside its cluster, one KV entry per
/// cluster (key: the cluster), written by the site itself when they change; proximity DNS
/// answers from it.
pub const SERVICES_BUCKET: &str = "services";
/// Request/reply: a site's DNS server asks the hub which sites nearest to it run a service,
/// on `optikon.api.dns.resolve.<cluster>` (reply: `Reply<DnsAnswer>`). The asking cluster,
/// whose position the hub measures from, is the subject's last token; see [`dns_resolve`].
pub const DNS_RESOLVE_PREFIX: &str = "optikon.api.dns.resolve";

/// Request/reply: a client asks what a release request would change, without changing
/// anything (`--dry-run`); the body is a `ReleaseRequest`, the reply a
/// `Reply<ReleasePreview>` (see [`crate::preview`]).
pub const PREVIEW_REQUEST: &str = "optikon.api.release.preview";
/// Hub → edge request/reply: the router asks one cluster's executor to dry-run a desired
/// release on `optikon.preview.ask.<cluster>` ([`preview_ask`]); the executor answers on the
/// reply subject the router chose, `optikon.preview.answer.<cluster>.<nonce>`
/// ([`preview_answer`]), the only replies a site may publish into the hub.
pub const PREVIEW_ASK_PREFIX: &str = "optikon.preview.ask";
pub const PREVIEW_ANSWER_PREFIX: &str = "optikon.preview.answer";
/// Short-lived grants, `<cluster>.<digest hex>` → the `ChartPin` a preview names: chart-ingest
/// serves a cluster's chart fetch for a chart its desired state names or one of these does.
pub const PREVIEW_GRANTS_BUCKET: &str = "preview-grants";

/// Request progress events: `optikon.event.request.<id>`, stored in `EVENTS`.
pub const EVENT_REQUEST_PREFIX: &str = "optikon.event.request";
pub const EVENTS_STREAM: &str = "EVENTS";
/// Chart-ingest announces a new chart here.
pub const EVENT_CHART_INGESTED: &str = "optikon.event.chart.ingested";

pub const CHARTS_BUCKET: &str = "charts";
pub const UPLOADS_BUCKET: &str = "chart-uploads";
/// Edge-local cache of the charts its releases use. A name of its own: a same-named bucket
/// at the edge would capture the hub's `$O.charts.>` subjects too.
pub const CHART_CACHE_BUCKET: &str = "chart-cache";
pub const CHART_INDEX_BUCKET: &str = "chart-index";
pub const CLUSTERS_BUCKET: &str = "clusters";
pub const DESIRED_BUCKET: &str = "desired";
pub const RELEASES_BUCKET: &str = "releases";
pub const REQUESTS_BUCKET: &str = "requests";
/// One entry per request per target cluster: `<request id>.<cluster>` ([`request_cluster_key`]).
pub const REQUEST_CLUSTERS_BUCKET: &str = "request-clusters";
/// One [`crate::rollout::Rollout`] per request that has a strategy; key = the request id.
pub const ROLLOUTS_BUCKET: &str = "rollouts";
/// Request/reply: pause, resume or abort a rollout ([`crate::rollout::RolloutControl`];
/// reply: `Reply<Rollout>`). The router answers.
pub const ROLLOUT_CONTROL: &str = "optikon.api.rollout.control";

/// Edge copy of one cluster's commands (`CMD_LOCAL_<cluster>`), sourced from the hub's
/// `CMD`. Named per cluster, not per site, so one leaf node may serve several clusters.
pub fn cmd_local_stream(cluster: &str) -> String {
    format!("CMD_LOCAL_{}", token(cluster))
}

/// Edge store of one cluster's status and heartbeats (`STATUS_<cluster>`).
pub fn status_stream(cluster: &str) -> String {
    format!("STATUS_{}", token(cluster))
}

/// The hub's durable pull consumer on `CMD` through which one cluster receives its commands
/// (`edge-<cluster>`, filtered to [`commands_for`]). Created by the router when the cluster
/// registers; the cluster's identity may pull from and ack only this one.
pub fn edge_consumer(cluster: &str) -> String {
    format!("edge-{}", token(cluster))
}

/// Inbox prefix of every connection at one edge site that talks to the hub: replies and
/// pulled messages cross the leaf link only under it, so a site hears only its own replies.
pub fn edge_inbox_prefix(cluster: &str) -> String {
    format!("_INBOX_{}", token(cluster))
}

/// `optikon.api.cluster.register.<cluster>`
pub fn cluster_register(cluster: &str) -> String {
    format!("{CLUSTER_REGISTER_PREFIX}.{}", token(cluster))
}

/// `optikon.api.chart.fetch.<cluster>`
pub fn chart_fetch(cluster: &str) -> String {
    format!("{CHART_FETCH_PREFIX}.{}", token(cluster))
}

/// The cluster a per-cluster API subject (`<prefix>.<cluster>`) was published for.
pub fn cluster_of_api_subject<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    (!rest.is_empty() && !rest.contains('.')).then_some(rest)
}

/// The cluster a hub status subject (`optikon.status.<cluster>.…`) belongs to.
pub fn cluster_of_status_subject(subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(STATUS_PREFIX)?.strip_prefix('.')?;
    let (cluster, _) = rest.split_once('.')?;
    Some(untoken(cluster))
}

/// Escapes a name for use as one subject token or KV key part. Release names may contain
/// `.`; Kubernetes names never contain `_`, so the mapping is one-to-one.
pub fn token(name: &str) -> String {
    name.replace('.', "_")
}

/// Inverse of [`token`].
pub fn untoken(token: &str) -> String {
    token.replace('_', ".")
}

/// `optikon.cmd.<cluster>`: the hub's subject of every command to one cluster.
///
/// One literal subject per cluster, not one per release: a consumer whose filter is a
/// literal subject finds its next message through the stream's subject index, while a
/// wildcard filter makes nats-server scan the messages stored since the consumer's last
/// one. With one consumer per cluster, a fan-out to N clusters then cost N scans of N
/// messages at the hub (this was the square-law cost at 10,000 clusters).
pub fn cluster_commands(cluster: &str) -> String {
    format!("{CMD_PREFIX}.{}", token(cluster))
}

/// `optikon.cmd.<cluster>.<namespace>.<release>`: one release's commands in the edge's
/// `CMD_LOCAL_<cluster>`.
pub fn command(cluster: &str, namespace: &str, release: &str) -> String {
    format!(
        "{CMD_PREFIX}.{}.{}.{}",
        token(cluster),
        token(namespace),
        token(release)
    )
}

/// `optikon.cmd.<cluster>.>`: every release's commands at one edge.
pub fn commands_for(cluster: &str) -> String {
    format!("{CMD_PREFIX}.{}.>", token(cluster))
}

/// `optikon.status.<cluster>.>`: everything one edge reports.
pub fn status_for(cluster: &str) -> String {
    format!("{STATUS_PREFIX}.{}.>", token(cluster))
}

/// `optikon.status.<cluster>.release.<namespace>.<release>`: one subject per release, so the
/// status streams can keep a bounded history per release and per heartbeat.
pub fn release_status(cluster: &str, namespace: &str, release: &str) -> String {
    format!(
        "{STATUS_PREFIX}.{}.release.{}.{}",
        token(cluster),
        token(namespace),
        token(release)
    )
}

/// `optikon.outbox.<cluster>.release.<namespace>.<release>`: where the executor stores a
/// release status at the edge.
pub fn outbox_status(cluster: &str, namespace: &str, release: &str) -> String {
    format!(
        "{OUTBOX_PREFIX}.{}.release.{}.{}",
        token(cluster),
        token(namespace),
        token(release)
    )
}

/// `optikon.outbox.<cluster>.>`: one cluster's outbox.
pub fn outbox_for(cluster: &str) -> String {
    format!("{OUTBOX_PREFIX}.{}.>", token(cluster))
}

/// The hub subject an outbox subject is forwarded to (`None`: not an outbox subject).
pub fn status_from_outbox(outbox_subject: &str) -> Option<String> {
    let rest = outbox_subject
        .strip_prefix(OUTBOX_PREFIX)?
        .strip_prefix('.')?;
    Some(format!("{STATUS_PREFIX}.{rest}"))
}

/// Key of a cluster's heartbeat in [`HEARTBEATS_BUCKET`].
pub fn heartbeat_key(cluster: &str) -> String {
    token(cluster)
}

/// The subject an edge publishes a heartbeat on to land in the hub's [`HEARTBEATS_BUCKET`]:
/// a KV put from another JetStream domain, `$JS.hub.API.$KV.<bucket>.<key>` (the hub maps
/// it to `$KV.<bucket>.<key>`; a plain `$KV.` subject is not carried across domains), so
/// the permission can name the one key.
pub fn heartbeat_put(cluster: &str) -> String {
    format!(
        "$JS.{HUB_DOMAIN}.API.$KV.{HEARTBEATS_BUCKET}.{}",
        heartbeat_key(cluster)
    )
}

/// The subject a site puts its Services on, to land in its own entry of the hub's
/// [`SERVICES_BUCKET`] (a KV put from another domain, as [`heartbeat_put`]).
pub fn services_put(cluster: &str) -> String {
    format!(
        "$JS.{HUB_DOMAIN}.API.$KV.{SERVICES_BUCKET}.{}",
        token(cluster)
    )
}

/// `optikon.api.dns.resolve.<cluster>`
pub fn dns_resolve(cluster: &str) -> String {
    format!("{DNS_RESOLVE_PREFIX}.{}", token(cluster))
}

/// `optikon.preview.ask.<cluster>`
pub fn preview_ask(cluster: &str) -> String {
    format!("{PREVIEW_ASK_PREFIX}.{}", token(cluster))
}

/// `optikon.preview.answer.<cluster>.<nonce>`
pub fn preview_answer(cluster: &str, nonce: &str) -> String {
    format!("{PREVIEW_ANSWER_PREFIX}.{}.{nonce}", token(cluster))
}

/// Key of a preview's chart grant in [`PREVIEW_GRANTS_BUCKET`]; `None` for a digest that
/// is not `sha256:` and 64 hex digits (a key must not take a wildcard from a request).
pub fn preview_grant_key(cluster: &str, digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("{}.{hex}", token(cluster)))
}

/// The subject a heartbeat is stored under at the hub (what live watchers subscribe to).
pub fn heartbeat_stored(cluster: &str) -> String {
    format!("$KV.{HEARTBEATS_BUCKET}.{}", heartbeat_key(cluster))
}

pub fn request_event(request_id: &str) -> String {
    format!("{EVENT_REQUEST_PREFIX}.{}", token(request_id))
}

/// Key of a release on a cluster in the `desired` and `releases` buckets.
pub fn release_key(cluster: &str, namespace: &str, release: &str) -> String {
    format!("{}.{}.{}", token(cluster), token(namespace), token(release))
}

/// Key of one cluster's part of a request in [`REQUEST_CLUSTERS_BUCKET`].
pub fn request_cluster_key(request_id: &str, cluster: &str) -> String {
    format!("{}.{}", token(request_id), token(cluster))
}

/// Key of a chart in the `chart-index` bucket. SemVer build metadata (`+`) is not allowed in
/// KV keys, so it is escaped like a dot would be in a name.
pub fn chart_key(name: &str, version: &str) -> String {
    format!("{}.{}", token(name), version.replace('+', "_"))
}

/// Name of the object holding a chart in the `charts` store: its digest.
pub fn chart_object(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The JetStream API prefix of another domain, for sources that cross a leaf link.
pub fn js_api_prefix(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_release_names_stay_one_token() {
        assert_eq!(
            command("copenhagen-1", "default", "web.v2"),
            "optikon.cmd.copenhagen-1.default.web_v2"
        );
        assert_eq!(untoken("web_v2"), "web.v2");
    }

    #[test]
    fn per_cluster_names() {
        assert_eq!(cmd_local_stream("copenhagen-1"), "CMD_LOCAL_copenhagen-1");
        assert_eq!(status_stream("copenhagen-1"), "STATUS_copenhagen-1");
        assert_eq!(edge_consumer("copenhagen-1"), "edge-copenhagen-1");
        assert_eq!(
            heartbeat_put("copenhagen-1"),
            "$JS.hub.API.$KV.heartbeats.copenhagen-1"
        );
        assert_eq!(
            cluster_register("copenhagen-1"),
            "optikon.api.cluster.register.copenhagen-1"
        );
    }

    #[test]
    fn outbox_subjects_map_to_hub_status_subjects() {
        let outbox = outbox_status("copenhagen-1", "default", "web.v2");
        assert_eq!(outbox, "optikon.outbox.copenhagen-1.release.default.web_v2");
        assert_eq!(
            status_from_outbox(&outbox).as_deref(),
            Some(release_status("copenhagen-1", "default", "web.v2").as_str())
        );
        assert_eq!(status_from_outbox("optikon.status.x.release.a.b"), None);
        assert_eq!(
            cluster_of_status_subject("optikon.status.copenhagen-2.release.a.b").as_deref(),
            Some("copenhagen-2")
        );
    }

    #[test]
    fn the_cluster_of_an_api_subject_is_its_last_token() {
        let subject = cluster_register("copenhagen-1");
        assert_eq!(
            cluster_of_api_subject(CLUSTER_REGISTER_PREFIX, &subject),
            Some("copenhagen-1")
        );
        assert_eq!(
            cluster_of_api_subject(CLUSTER_REGISTER_PREFIX, CLUSTER_REGISTER_PREFIX),
            None
        );
        assert_eq!(
            cluster_of_api_subject(CLUSTER_REGISTER_PREFIX, "optikon.api.cluster.register.a.b"),
            None
        );
    }

    #[test]
    fn chart_keys_are_valid_kv_keys() {
        let key = chart_key("nginx", "1.2.3+build.4");
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
        );
    }
}
