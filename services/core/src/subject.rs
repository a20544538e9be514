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
/// Request/reply: an edge announces itself (reply: `Reply<ClusterRecord>`).
pub const CLUSTER_REGISTER: &str = "optikon.api.cluster.register";

/// Header on a chart push naming an object in [`UPLOADS_BUCKET`] that holds the archive.
pub const HEADER_UPLOAD: &str = "Optikon-Upload";
/// Header on a chart push: replace a stored chart of the same name and version.
pub const HEADER_FORCE: &str = "Optikon-Force";

/// Hub → edge commands: `optikon.cmd.<cluster>.<namespace>.<release>`.
pub const CMD_STREAM: &str = "CMD";
pub const CMD_PREFIX: &str = "optikon.cmd";

/// Edge → hub status: `optikon.status.<cluster>.heartbeat` and
/// `optikon.status.<cluster>.release.<namespace>.<release>`, stored at the edge in
/// [`status_stream`] and sourced by the hub into one of the [`status_hub_stream`] shards.
pub const STATUS_PREFIX: &str = "optikon.status";

/// The hub's copy of the edges' status is split over this many streams (`STATUS_HUB_00` …),
/// each sourcing the status streams of the clusters hashed to it ([`status_hub_shard`]). One
/// stream would carry every cluster's source in its config, which at a few thousand clusters
/// no longer fits in one message; shards also keep each registration's update small.
pub const STATUS_HUB_SHARDS: u32 = 16;

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

/// Edge copy of one cluster's commands (`CMD_LOCAL_<cluster>`), sourced from the hub's
/// `CMD`. Named per cluster, not per site, so one leaf node may serve several clusters.
pub fn cmd_local_stream(cluster: &str) -> String {
    format!("CMD_LOCAL_{}", token(cluster))
}

/// Edge store of one cluster's status and heartbeats (`STATUS_<cluster>`).
pub fn status_stream(cluster: &str) -> String {
    format!("STATUS_{}", token(cluster))
}

/// Which `STATUS_HUB` shard sources `cluster`'s status: FNV-1a of the name, so every
/// service and every version agree without a lookup.
pub fn status_hub_shard(cluster: &str) -> u32 {
    let hash = cluster.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % STATUS_HUB_SHARDS
}

/// Name of one `STATUS_HUB` shard.
pub fn status_hub_stream(shard: u32) -> String {
    format!("STATUS_HUB_{shard:02}")
}

/// The `STATUS_HUB` shard holding `cluster`'s status at the hub.
pub fn status_hub_stream_for(cluster: &str) -> String {
    status_hub_stream(status_hub_shard(cluster))
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

/// `optikon.cmd.<cluster>.<namespace>.<release>`
pub fn command(cluster: &str, namespace: &str, release: &str) -> String {
    format!(
        "{CMD_PREFIX}.{}.{}.{}",
        token(cluster),
        token(namespace),
        token(release)
    )
}

/// `optikon.cmd.<cluster>.>`: everything one edge must receive.
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

pub fn heartbeat(cluster: &str) -> String {
    format!("{STATUS_PREFIX}.{}.heartbeat", token(cluster))
}

pub fn request_event(request_id: &str) -> String {
    format!("{EVENT_REQUEST_PREFIX}.{}", token(request_id))
}

/// Key of a release on a cluster in the `desired` and `releases` buckets.
pub fn release_key(cluster: &str, namespace: &str, release: &str) -> String {
    format!("{}.{}.{}", token(cluster), token(namespace), token(release))
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

/// Delivery prefix of the hub → edge `CMD` source: the edge's leaf user may receive only
/// deliveries under its own prefix.
pub fn edge_delivery_prefix(cluster: &str) -> String {
    format!("optikon.deliver.{}", token(cluster))
}

/// Delivery prefix of the edge → hub `STATUS_<cluster>` source: the edge's leaf user may
/// send only deliveries under this prefix.
pub fn hub_delivery_prefix(cluster: &str) -> String {
    format!("optikon.deliver.hub.{}", token(cluster))
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
    fn per_cluster_streams_and_shards() {
        assert_eq!(cmd_local_stream("copenhagen-1"), "CMD_LOCAL_copenhagen-1");
        assert_eq!(status_stream("copenhagen-1"), "STATUS_copenhagen-1");
        // Fixed by the hash, so a change of the hash (which would orphan sources) shows here.
        assert_eq!(status_hub_stream_for("copenhagen-1"), "STATUS_HUB_11");
        let mut per_shard = vec![0; STATUS_HUB_SHARDS as usize];
        for i in 0..10_000 {
            per_shard[status_hub_shard(&format!("sim-{i:05}")) as usize] += 1;
        }
        // Roughly even: no shard more than 20 % off the mean of 625.
        assert!(
            per_shard.iter().all(|&n| (500..=750).contains(&n)),
            "{per_shard:?}"
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
