//! A stolen edge tries to break in, on the real test bed: every attempt is refused by the
//! hub's nats-server, has no effect the hub's own view can find, and the site's legitimate
//! path still works. Then each hub role tries to go beyond its role.
//!
//! Two vantage points, both as a thief would have them: a client of the site's own leaf
//! server, and the site's NKey in the thief's own nats-server dialling the hub. (The seed
//! alone does not open a client connection to the hub: the identity is for leaf nodes.)

use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use optikon_core::message::{Action, ApiVersion, ChartPin, DesiredRelease, Timestamp};
use optikon_core::subject;
use optikon_runtime::chart_fetch;
use optikon_testbed::{HubRole, Site, Testbed, TestbedConfig};

const THIEF: &str = "copenhagen-1";
const VICTIM: &str = "copenhagen-2";
/// How long a refused request is given to be answered anyway.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// Hub services as processes (router, chart-ingest, gateway), two sites, no Kubernetes.
fn testbed() -> Testbed {
    Testbed::start(TestbedConfig {
        sites: Site::demo().into_iter().take(2).collect(),
        clusters: false,
        services: true,
        ..TestbedConfig::default()
    })
    .expect("test bed starts (run scripts/install-tools if nats-server is missing)")
}

async fn connect(url: &str, inbox_prefix: Option<&str>) -> anyhow::Result<async_nats::Client> {
    Ok(optikon_runtime::connect_url_with(url, "hostile-edge-test", inbox_prefix).await?)
}

/// The hub's own view, to check that nothing happened.
struct Hub {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl Hub {
    async fn open(testbed: &Testbed) -> anyhow::Result<Self> {
        let client = connect(&testbed.admin_url(), None).await?;
        let js = jetstream::new(client.clone());
        // The router sets the hub up when it starts; wait until it has.
        optikon_e2e::eventually("the hub's topology", Duration::from_secs(30), || async {
            Ok(js.get_key_value(subject::HEARTBEATS_BUCKET).await.ok())
        })
        .await?;
        Ok(Hub { client, js })
    }

    async fn stream_names(&self) -> anyhow::Result<Vec<String>> {
        let names: Vec<String> = self
            .js
            .stream_names()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    async fn messages_in(&self, stream: &str) -> anyhow::Result<u64> {
        Ok(self
            .js
            .get_stream(stream)
            .await?
            .info()
            .await?
            .state
            .messages)
    }

    async fn kv(&self, bucket: &str, key: &str) -> anyhow::Result<Option<Bytes>> {
        Ok(self.js.get_key_value(bucket).await?.get(key).await?)
    }

    /// A command for `cluster` in the hub's `CMD`, as the router would store it.
    async fn command(
        &self,
        cluster: &str,
        tag: &str,
        chart: Option<ChartPin>,
    ) -> anyhow::Result<()> {
        let desired = DesiredRelease {
            api_version: ApiVersion,
            cluster: cluster.into(),
            namespace: "default".into(),
            release: "web".into(),
            generation: 1,
            request_id: tag.into(),
            action: Action::Install,
            chart: chart.clone(),
            values: serde_json::json!({"secret": "only for this site"}),
            helm_values: Default::default(),
            rollback_to: None,
            atomic: false,
            requested_at: Timestamp::now(),
            request_sequence: None,
        };
        let body = serde_json::to_vec(&desired)?;
        self.js
            .get_key_value(subject::DESIRED_BUCKET)
            .await?
            .put(
                subject::release_key(cluster, "default", "web"),
                body.clone().into(),
            )
            .await?;
        self.js
            .publish(subject::cluster_commands(cluster), body.into())
            .await?
            .await?;
        Ok(())
    }
}

/// Sends a request and insists it goes unanswered (refused: dropped by the hub, or no
/// route for it at all). Returns what was tried, for the failure message.
async fn refused(client: &async_nats::Client, subject: &str, body: &str) -> anyhow::Result<()> {
    let attempt = tokio::time::timeout(
        REFUSED_WITHIN,
        client.request(subject.to_owned(), Bytes::from(body.to_owned())),
    )
    .await;
    match attempt {
        Err(_) | Ok(Err(_)) => Ok(()),
        Ok(Ok(reply)) => anyhow::bail!(
            "{subject} was answered: {}",
            String::from_utf8_lossy(&reply.payload)
        ),
    }
}

/// Every attack of the list, from `thief` (a client that reaches the hub only through a
/// leaf node holding the thief site's identity), checked against the hub's own view.
async fn attacks_fail(hub: &Hub, thief: &async_nats::Client, from: &str) -> anyhow::Result<()> {
    let api = |rest: &str| format!("$JS.hub.API.{rest}");
    let streams_before = hub.stream_names().await?;
    // The same request is answered for a client the hub trusts, so an unanswered one below
    // is a refusal, not a hub that answers nobody.
    hub.client
        .request(api("STREAM.INFO.CMD"), Bytes::from_static(b"{}"))
        .await
        .context("the hub answers its own client's STREAM.INFO")?;

    // Manage or read streams and consumers at the hub.
    for (what, body) in [
        ("STREAM.NAMES", "{}"),
        ("STREAM.LIST", "{}"),
        ("STREAM.INFO.CMD", "{}"),
        ("STREAM.INFO.KV_desired", "{}"),
        ("STREAM.DELETE.CMD", ""),
        ("STREAM.DELETE.KV_desired", ""),
        ("STREAM.DELETE.OBJ_charts", ""),
        ("STREAM.PURGE.CMD", "{}"),
        ("STREAM.PURGE.KV_requests", "{}"),
        ("STREAM.UPDATE.CMD", r#"{"name":"CMD","subjects":["x.>"]}"#),
        (
            "STREAM.CREATE.EVIL",
            r#"{"name":"EVIL","subjects":["optikon.cmd.>"]}"#,
        ),
        (
            "CONSUMER.CREATE.CMD",
            r#"{"stream_name":"CMD","config":{"filter_subject":"optikon.cmd.>"}}"#,
        ),
        (
            "CONSUMER.CREATE.CMD.steal.optikon.cmd.copenhagen-2.>",
            r#"{"stream_name":"CMD","config":{"name":"steal"}}"#,
        ),
        (
            "CONSUMER.DURABLE.CREATE.CMD.steal",
            r#"{"stream_name":"CMD","config":{"durable_name":"steal"}}"#,
        ),
        ("CONSUMER.INFO.CMD.edge-copenhagen-2", ""),
        ("CONSUMER.DELETE.CMD.edge-copenhagen-2", ""),
        (
            "CONSUMER.MSG.NEXT.CMD.edge-copenhagen-2",
            r#"{"batch":1,"expires":1000000000}"#,
        ),
        (
            "CONSUMER.MSG.NEXT.RELEASE_REQUESTS.selector-router",
            r#"{"batch":1}"#,
        ),
        (
            "DIRECT.GET.KV_desired.$KV.desired.copenhagen-2.default.web",
            "",
        ),
        (
            "DIRECT.GET.KV_requests",
            r#"{"last_by_subj":"$KV.requests.x"}"#,
        ),
        (
            "STREAM.MSG.GET.KV_clusters",
            r#"{"last_by_subj":"$KV.clusters.copenhagen-2"}"#,
        ),
        ("STREAM.INFO.OBJ_charts", "{}"),
        (
            "CONSUMER.CREATE.OBJ_charts",
            r#"{"stream_name":"OBJ_charts","config":{}}"#,
        ),
        (
            "CONSUMER.CREATE.KV_desired",
            r#"{"stream_name":"KV_desired","config":{}}"#,
        ),
    ] {
        refused(thief, &api(what), body)
            .await
            .with_context(|| format!("{from}: {what}"))?;
    }
    ensure!(
        hub.stream_names().await? == streams_before,
        "{from}: the hub's streams changed"
    );
    let consumer = hub
        .js
        .get_stream(subject::CMD_STREAM)
        .await?
        .consumer_info(subject::edge_consumer(VICTIM))
        .await;
    ensure!(
        consumer.is_ok(),
        "{from}: the victim's command consumer is gone"
    );

    // The router listening for the victim's answer to a preview: the thief's forgery must
    // not reach it.
    let mut victims_answers = hub
        .client
        .subscribe(subject::preview_answer(VICTIM, "guessed"))
        .await?;
    hub.client.flush().await?;

    // Write other sites' KV entries, and the hub's own buckets.
    let key = subject::release_key(VICTIM, "default", "web");
    let desired_before = hub.kv(subject::DESIRED_BUCKET, &key).await?;
    for (subject, body) in [
        (format!("$KV.desired.{key}"), "{}"),
        ("$KV.requests.forged".to_owned(), "{}"),
        (
            format!("$KV.clusters.{VICTIM}"),
            r#"{"labels":{"owned":"yes"}}"#,
        ),
        (format!("$KV.releases.{key}"), "{}"),
        (
            format!("$KV.heartbeats.{VICTIM}"),
            r#"{"cluster":"copenhagen-2"}"#,
        ),
        (
            subject::heartbeat_put(VICTIM),
            r#"{"cluster":"copenhagen-2"}"#,
        ),
        (
            "optikon.release.request".to_owned(),
            r#"{"apiVersion":"optikon/v1","id":"evil","action":"uninstall","release":"web","namespace":"default","selector":""}"#,
        ),
        // Steer or forge a fleet rollout.
        (
            subject::ROLLOUT_CONTROL.to_owned(),
            r#"{"apiVersion":"optikon/v1","id":"evil","action":"abort"}"#,
        ),
        (format!("$KV.{}.evil", subject::ROLLOUTS_BUCKET), "{}"),
        // Ask for a preview (every site's rendered values would be in the answer), grant
        // itself a chart, or forge another site's answer to a preview.
        (
            subject::PREVIEW_REQUEST.to_owned(),
            r#"{"apiVersion":"optikon/v1","id":"evil","action":"uninstall","release":"web","namespace":"default","selector":""}"#,
        ),
        (
            format!(
                "$KV.{}.{}",
                subject::PREVIEW_GRANTS_BUCKET,
                subject::preview_grant_key(THIEF, &format!("sha256:{}", "0".repeat(64)))
                    .expect("a valid digest")
            ),
            "{}",
        ),
        (subject::preview_answer(VICTIM, "guessed"), "{}"),
        (subject::cluster_commands(VICTIM), "{}"),
        (
            subject::release_status(VICTIM, "default", "web"),
            r#"{"forged":true}"#,
        ),
        // Point the fleet's DNS at itself in the victim's name, or ask as the victim.
        (
            subject::services_put(VICTIM),
            site_services(VICTIM).as_str(),
        ),
        (
            format!("$KV.services.{VICTIM}"),
            site_services(VICTIM).as_str(),
        ),
        (subject::dns_resolve(VICTIM), DNS_QUESTION),
    ] {
        refused(thief, &subject, body)
            .await
            .with_context(|| format!("{from}: publish {subject}"))?;
    }
    thief.flush().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        hub.kv(subject::DESIRED_BUCKET, &key).await? == desired_before,
        "{from}: the victim's desired state changed"
    );
    ensure!(
        hub.kv(subject::REQUESTS_BUCKET, "forged").await?.is_none(),
        "{from}: a forged request record was stored"
    );
    ensure!(
        hub.kv(subject::REQUESTS_BUCKET, "evil").await?.is_none(),
        "{from}: a release request was accepted"
    );
    ensure!(
        hub.kv(subject::RELEASES_BUCKET, &key).await?.is_none(),
        "{from}: a forged release record was stored"
    );
    ensure!(
        hub.kv(subject::ROLLOUTS_BUCKET, "evil").await?.is_none(),
        "{from}: a forged rollout record was stored"
    );
    let forged_answer =
        tokio::time::timeout(Duration::from_millis(500), victims_answers.next()).await;
    ensure!(
        forged_answer.is_err(),
        "{from}: an answer to a preview of {VICTIM} was forged"
    );
    ensure!(
        optikon_runtime::kv::keys(&hub.js, subject::PREVIEW_GRANTS_BUCKET)
            .await
            .map_err(anyhow::Error::msg)?
            .is_empty(),
        "{from}: a preview grant was forged"
    );
    ensure!(
        hub.kv(subject::HEARTBEATS_BUCKET, VICTIM).await?.is_none(),
        "{from}: a heartbeat was forged for {VICTIM}"
    );
    ensure!(
        hub.kv(subject::SERVICES_BUCKET, VICTIM).await?.is_none(),
        "{from}: Services were forged for {VICTIM}"
    );
    let victim_record = hub.kv(subject::CLUSTERS_BUCKET, VICTIM).await?;
    ensure!(
        victim_record
            .as_ref()
            .is_none_or(|r| !String::from_utf8_lossy(r).contains("owned")),
        "{from}: the victim's registry record changed"
    );
    ensure!(
        hub.messages_in(subject::RELEASE_REQUESTS_STREAM).await? == 0,
        "{from}: a release request was stored"
    );
    let forged_status = hub
        .js
        .get_stream(subject::STATUS_HUB_STREAM)
        .await?
        .get_last_raw_message_by_subject(&subject::release_status(VICTIM, "default", "web"))
        .await;
    ensure!(
        forged_status.is_err(),
        "{from}: a status was stored for {VICTIM}"
    );

    // Register as another site, or as another site over its own subject.
    refused(
        thief,
        &subject::cluster_register(VICTIM),
        &registration(VICTIM),
    )
    .await
    .with_context(|| format!("{from}: register as {VICTIM}"))?;
    let reply = thief
        .request(
            subject::cluster_register(THIEF),
            registration(VICTIM).into(),
        )
        .await
        .context("registration on its own subject is answered")?;
    let text = String::from_utf8_lossy(&reply.payload);
    ensure!(
        text.contains("error") && text.contains("identity of cluster"),
        "{from}: a registration naming {VICTIM} on {THIEF}'s subject was not refused: {text}"
    );

    // Listen to everything, including other clients' inboxes and other sites' commands.
    let mut everything = thief.subscribe(">").await?;
    thief.flush().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for subject in [
        "_INBOX.someone.else".to_owned(),
        format!("{}.secret", subject::edge_inbox_prefix(VICTIM)),
        subject::cluster_commands(VICTIM),
        "optikon.event.request.secret".to_owned(),
        format!("$KV.desired.{key}"),
        "optikon.api.chart.push".to_owned(),
        // Another site's previews carry its desired values.
        subject::preview_ask(VICTIM),
        subject::PREVIEW_REQUEST.to_owned(),
    ] {
        hub.client
            .publish(subject, "for someone else".into())
            .await?;
    }
    hub.client.flush().await?;
    let heard = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(message) = everything.next().await {
            if message.payload.as_ref() == b"for someone else" {
                return Some(message.subject.to_string());
            }
        }
        None
    })
    .await;
    if let Ok(Some(subject)) = heard {
        anyhow::bail!("{from} heard {subject}, meant for someone else");
    }
    Ok(())
}

/// A DNS question as a site's proximity DNS asks it.
const DNS_QUESTION: &str = r#"{"apiVersion":"optikon/v1","namespace":"shop","service":"web"}"#;

/// A site's Services entry claiming `name` runs `shop/web` at a documentation address.
fn site_services(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"optikon/v1","cluster":"{name}","services":[{{"namespace":"shop","name":"web","addresses":["192.0.2.66"]}}],"at":"2026-01-01T00:00:00Z"}}"#
    )
}

fn registration(name: &str) -> String {
    serde_json::json!({"apiVersion": "optikon/v1", "name": name, "domain": name, "labels": {}})
        .to_string()
}

/// Acknowledging another consumer's messages: the hub hands the victim a command (as a pull
/// of its own would), the thief acks it with the very ack subject, and it stays unacked.
async fn foreign_acks_fail(
    hub: &Hub,
    thief: &async_nats::Client,
    from: &str,
) -> anyhow::Result<()> {
    let stream = hub.js.get_stream(subject::CMD_STREAM).await?;
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&subject::edge_consumer(VICTIM))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await?;
    let delivered = batch
        .next()
        .await
        .context("the victim's command is pending")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let ack_subject = delivered.reply.clone().context("an ack subject")?;
    thief
        .publish(ack_subject.to_string(), "+ACK".into())
        .await?;
    thief.flush().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = consumer.info().await?;
    ensure!(
        info.num_ack_pending == 1,
        "{from}: acking the victim's command took effect ({} pending)",
        info.num_ack_pending
    );
    // Put it back for the next round.
    delivered
        .ack_with(jetstream::AckKind::Nak(None))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

/// What the thief's site may do still works: pull and ack its own command, send its status
/// and heartbeat, register, fetch a chart its own desired state names — and only that one.
async fn legitimate_path_works(
    testbed: &Testbed,
    hub: &Hub,
    site: &async_nats::Client,
    from: &str,
) -> anyhow::Result<()> {
    // Its own command, through its own consumer.
    hub.command(THIEF, &format!("legit-{from}"), None).await?;
    let pull = format!(
        "$JS.hub.API.CONSUMER.MSG.NEXT.CMD.{}",
        subject::edge_consumer(THIEF)
    );
    let inbox = site.new_inbox();
    let mut replies = site.subscribe(inbox.clone()).await?;
    site.publish_with_reply(pull, inbox, r#"{"batch":1,"expires":5000000000}"#.into())
        .await?;
    let message = tokio::time::timeout(Duration::from_secs(5), replies.next())
        .await
        .context("its own command arrives")?
        .context("reply subscription")?;
    ensure!(
        message.status.is_none(),
        "{from}: pulling its own command: {:?}",
        message.status
    );
    let desired: DesiredRelease = serde_json::from_slice(&message.payload)?;
    ensure!(
        desired.cluster == THIEF,
        "{from}: got a command for {}",
        desired.cluster
    );
    site.publish(
        message.reply.context("ack subject")?.to_string(),
        "+ACK".into(),
    )
    .await?;

    // Its status and heartbeat reach the hub.
    let status_subject = subject::release_status(THIEF, "default", "legit");
    let ack = jetstream::new(site.clone())
        .publish(status_subject.clone(), format!("status from {from}").into())
        .await?
        .await?;
    ensure!(
        ack.stream == subject::STATUS_HUB_STREAM,
        "{from}: status stored in {}",
        ack.stream
    );
    site.publish(
        subject::heartbeat_put(THIEF),
        format!(r#"{{"from":"{from}"}}"#).into(),
    )
    .await?;
    site.flush().await?;
    optikon_e2e::eventually(
        "its heartbeat at the hub",
        Duration::from_secs(5),
        || async {
            let value = hub.kv(subject::HEARTBEATS_BUCKET, THIEF).await?;
            Ok(value
                .filter(|v| String::from_utf8_lossy(v).contains(from))
                .map(|_| ()))
        },
    )
    .await?;

    // Its Services are stored in its own entry, and its DNS questions are answered.
    let reply = site
        .request(subject::services_put(THIEF), site_services(THIEF).into())
        .await?;
    ensure!(
        !String::from_utf8_lossy(&reply.payload).contains("error"),
        "{from}: its own Services: {}",
        String::from_utf8_lossy(&reply.payload)
    );
    ensure!(
        hub.kv(subject::SERVICES_BUCKET, THIEF).await?.is_some(),
        "{from}: its Services are not at the hub"
    );
    let reply = site
        .request(subject::dns_resolve(THIEF), DNS_QUESTION.into())
        .await?;
    ensure!(
        String::from_utf8_lossy(&reply.payload).contains("\"sites\""),
        "{from}: its DNS question: {}",
        String::from_utf8_lossy(&reply.payload)
    );

    // Its registration is answered.
    let reply = site
        .request(subject::cluster_register(THIEF), registration(THIEF).into())
        .await?;
    ensure!(
        String::from_utf8_lossy(&reply.payload).contains("\"ok\""),
        "{from}: its own registration: {}",
        String::from_utf8_lossy(&reply.payload)
    );

    // A chart its desired state names arrives; one that it does not name is refused.
    let operator = optikon_client::Client::new(connect(&testbed.hub_url(), None).await?);
    let named = operator.push_chart(&test_chart("named")?, false).await?;
    let other = operator.push_chart(&test_chart("other")?, false).await?;
    hub.command(THIEF, &format!("chart-{from}"), Some(named.pin()))
        .await?;
    let bytes =
        chart_fetch::fetch_chart(site, THIEF, &named.digest, Duration::from_secs(10)).await?;
    ensure!(
        optikon_core::chart::digest(&bytes) == named.digest,
        "{from}: the named chart"
    );
    let refused_fetch =
        chart_fetch::fetch_chart(site, THIEF, &other.digest, Duration::from_secs(10)).await;
    ensure!(
        matches!(refused_fetch, Err(chart_fetch::ChartFetchError::Refused(_))),
        "{from}: a chart its desired state does not name was not refused: {refused_fetch:?}"
    );
    // Asking in the victim's name goes nowhere.
    hub.command(VICTIM, "victim-chart", Some(other.pin()))
        .await?;
    let as_victim = chart_fetch::fetch_chart(site, VICTIM, &other.digest, REFUSED_WITHIN).await;
    ensure!(
        matches!(as_victim, Err(chart_fetch::ChartFetchError::Unreachable(_))),
        "{from}: a fetch in {VICTIM}'s name was answered: {as_victim:?}"
    );
    Ok(())
}

/// A small chart of our own, packaged in memory.
fn test_chart(name: &str) -> anyhow::Result<Vec<u8>> {
    let chart_yaml = format!("apiVersion: v2\nname: {name}\nversion: 0.1.0\n");
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n";
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, text) in [
        ("Chart.yaml", chart_yaml.as_str()),
        ("templates/cm.yaml", template),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, format!("{name}/{path}"), text.as_bytes())?;
    }
    Ok(builder.into_inner()?.finish()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_edge_reaches_only_its_own_data() -> anyhow::Result<()> {
    let testbed = testbed();
    let hub = Hub::open(&testbed).await?;
    // Both sites registered, as their probers would have, and the victim has a command.
    for site in [THIEF, VICTIM] {
        let client = connect(
            &testbed.edge(site)?.nats_url(),
            Some(&subject::edge_inbox_prefix(site)),
        )
        .await?;
        // As a prober does: until the router's subscription has reached the site's leaf
        // server over the link, a request there has no responders.
        let reply = optikon_e2e::eventually(
            &format!("{site}'s registration answered"),
            Duration::from_secs(30),
            || async {
                match client
                    .request(subject::cluster_register(site), registration(site).into())
                    .await
                {
                    Ok(reply) => Ok(Some(reply)),
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
                    Err(e) => Err(e.into()),
                }
            },
        )
        .await?;
        ensure!(
            String::from_utf8_lossy(&reply.payload).contains("\"ok\""),
            "register {site}"
        );
    }
    hub.command(VICTIM, "victim-secret", None).await?;

    // The seed does not open a client connection to the hub.
    let seed = testbed.edge(THIEF)?.identity.seed.clone();
    let direct = async_nats::ConnectOptions::with_nkey(seed)
        .connect(testbed.hub_address())
        .await;
    ensure!(
        direct.is_err(),
        "the site's NKey opened a client connection to the hub"
    );

    // 1. A client of the site's own leaf server.
    let edge = connect(
        &testbed.edge(THIEF)?.nats_url(),
        Some(&subject::edge_inbox_prefix(THIEF)),
    )
    .await?;
    attacks_fail(&hub, &edge, "a client of the site's leaf").await?;
    foreign_acks_fail(&hub, &edge, "a client of the site's leaf").await?;
    legitimate_path_works(&testbed, &hub, &edge, "site-leaf").await?;

    // 2. The site's identity in the thief's own leaf node.
    let identity = testbed.edge(THIEF)?.identity.clone();
    let (_rogue, rogue_url) = testbed.start_leaf_as("rogue", &identity)?;
    let rogue = connect(&rogue_url, Some(&subject::edge_inbox_prefix(THIEF))).await?;
    attacks_fail(&hub, &rogue, "a rogue leaf with the site's NKey").await?;
    foreign_acks_fail(&hub, &rogue, "a rogue leaf with the site's NKey").await?;
    // The rogue's default inbox prefix hears nothing from the hub either.
    let plain = connect(&rogue_url, None).await?;
    refused(
        &plain,
        &subject::cluster_register(THIEF),
        &registration(THIEF),
    )
    .await
    .context("a reply to another inbox prefix crossed the link")?;
    legitimate_path_works(&testbed, &hub, &rogue, "rogue-leaf").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hub_role_stays_within_its_role() -> anyhow::Result<()> {
    let testbed = testbed();
    let hub = Hub::open(&testbed).await?;
    let key = subject::release_key(VICTIM, "default", "web");
    let command_subject = subject::cluster_commands(VICTIM);

    for role in [
        HubRole::Gateway,
        HubRole::Operator,
        HubRole::ChartIngest,
        HubRole::ProximityDns,
        HubRole::Router,
    ] {
        let client = connect(&testbed.role_url(role), None).await?;
        let who = role.user();
        // Nobody but the router sends commands or writes desired state; nobody deletes or
        // purges a stream, or writes an edge's heartbeat.
        let mut forbidden = vec![
            ("$JS.API.STREAM.DELETE.CMD".to_owned(), ""),
            ("$JS.API.STREAM.PURGE.KV_desired".to_owned(), "{}"),
            (format!("$KV.heartbeats.{VICTIM}"), "{}"),
            (format!("$KV.services.{VICTIM}"), "{}"),
        ];
        if role != HubRole::Router {
            forbidden.push((command_subject.clone(), "{}"));
            forbidden.push((format!("$KV.desired.{key}"), "{}"));
            forbidden.push((format!("$KV.requests.{who}"), "{}"));
            forbidden.push((
                "$JS.API.STREAM.CREATE.EVIL".to_owned(),
                r#"{"name":"EVIL","subjects":["evil.>"]}"#,
            ));
            forbidden.push((
                "$JS.API.STREAM.UPDATE.CMD".to_owned(),
                r#"{"name":"CMD","subjects":["x.>"]}"#,
            ));
        }
        if matches!(role, HubRole::Gateway | HubRole::Operator) {
            forbidden.push((
                "$JS.API.CONSUMER.CREATE.RELEASE_REQUESTS.selector-router".to_owned(),
                r#"{"stream_name":"RELEASE_REQUESTS","config":{"durable_name":"selector-router","ack_policy":"none"}}"#,
            ));
            forbidden.push((
                "$JS.API.CONSUMER.MSG.NEXT.CMD.edge-copenhagen-2".to_owned(),
                r#"{"batch":1}"#,
            ));
            forbidden.push((
                "$JS.API.CONSUMER.DELETE.RELEASE_REQUESTS.selector-router".to_owned(),
                "",
            ));
            forbidden.push((
                "$JS.API.CONSUMER.DELETE.STATUS_HUB.status-fold".to_owned(),
                "",
            ));
            forbidden.push((
                "$JS.API.CONSUMER.DELETE.CMD.edge-copenhagen-2".to_owned(),
                "",
            ));
            forbidden.push((
                "$JS.API.CONSUMER.MSG.NEXT.RELEASE_REQUESTS.selector-router".to_owned(),
                r#"{"batch":1}"#,
            ));
        }
        for (subject, body) in &forbidden {
            refused(&client, subject, body)
                .await
                .with_context(|| format!("{who}: {subject}"))?;
        }
        client.flush().await?;
        ensure!(
            hub.kv(subject::DESIRED_BUCKET, &key).await?.is_none(),
            "{who} wrote desired state"
        );
        ensure!(
            hub.kv(subject::HEARTBEATS_BUCKET, VICTIM).await?.is_none(),
            "{who} wrote a heartbeat"
        );
        ensure!(
            hub.kv(subject::SERVICES_BUCKET, VICTIM).await?.is_none(),
            "{who} wrote a site's Services"
        );
        ensure!(
            hub.messages_in(subject::CMD_STREAM).await? == 0,
            "{who} stored a command"
        );
        ensure!(
            hub.stream_names().await?.iter().all(|n| n != "EVIL"),
            "{who} created a stream"
        );
    }

    // And what each role is for still works.
    let operator = optikon_client::Client::new(connect(&testbed.hub_url(), None).await?);
    ensure!(
        operator.clusters().await?.is_empty(),
        "no site registered in this test"
    );
    let entry = operator.push_chart(&test_chart("roles")?, false).await?;
    ensure!(
        entry.name == "roles",
        "the operator pushes a chart through chart-ingest"
    );
    let gateway = connect(&testbed.role_url(HubRole::Gateway), None).await?;
    let ack = jetstream::new(gateway)
        .publish(
            subject::RELEASE_REQUEST,
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": "optikon/v1", "id": "roles-1", "action": "uninstall",
                "release": "web", "namespace": "default", "selector": "none=here"
            }))?
            .into(),
        )
        .await?
        .await?;
    ensure!(
        ack.stream == subject::RELEASE_REQUESTS_STREAM,
        "the gateway publishes a request"
    );
    optikon_e2e::eventually(
        "the router records the request",
        Duration::from_secs(20),
        || async {
            Ok(hub
                .kv(subject::REQUESTS_BUCKET, "roles-1")
                .await?
                .map(|_| ()))
        },
    )
    .await?;
    Ok(())
}
