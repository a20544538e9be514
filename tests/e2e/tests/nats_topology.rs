//! The NATS topology on real nats-servers: hub → edge commands through each site's
//! downlink, edge → hub status through its uplink, per-edge permissions, and store and
//! forward across a cut leaf link. (`hostile_edge.rs` tries everything a stolen edge could.)

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use optikon_core::message::{Action, ApiVersion, DesiredRelease, Timestamp};
use optikon_core::subject;
use optikon_e2e::eventually;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::topology;
use optikon_testbed::{HubRole, Site, Testbed, TestbedConfig};

/// A NATS-only test bed: these tests need no Kubernetes, so they start their own in a second.
fn nats_testbed() -> Testbed {
    Testbed::start(TestbedConfig {
        sites: Site::demo().into_iter().take(2).collect(),
        clusters: false,
        services: false,
        ..TestbedConfig::default()
    })
    .expect("NATS test bed starts (run scripts/install-tools if nats-server is missing)")
}

struct Sites {
    hub: async_nats::Client,
    hub_js: jetstream::Context,
    edges: BTreeMap<String, (async_nats::Client, jetstream::Context)>,
    _shutdown: Shutdown,
}

/// Sets the hub up as the router does (topology, each edge's command consumer) and runs each
/// site's link as its prober does.
async fn connect_and_set_up(testbed: &Testbed) -> anyhow::Result<Sites> {
    let router = optikon_runtime::connect_url(&testbed.role_url(HubRole::Router), "test").await?;
    let router_js = jetstream::new(router.clone());
    topology::ensure_hub(&router_js).await?;
    let hub = optikon_runtime::connect_url(&testbed.admin_url(), "test").await?;
    let hub_js = jetstream::new(hub.clone());
    let shutdown = Shutdown::new();
    let mut edges = BTreeMap::new();
    for edge in &testbed.edges {
        let name = &edge.site.name;
        topology::ensure_edge_consumer(&router_js, name).await?;
        // Set up twice, as a re-registration would: the second changes nothing.
        topology::ensure_edge_consumer(&router_js, name).await?;
        let client = optikon_runtime::connect_url_with(
            &edge.nats_url(),
            "test",
            Some(&subject::edge_inbox_prefix(name)),
        )
        .await?;
        let js = jetstream::new(client.clone());
        topology::ensure_edge(&js, name).await?;
        health_prober::spawn_link(
            client.clone(),
            name.clone(),
            shutdown.clone(),
            Default::default(),
        );
        edges.insert(name.clone(), (client, js));
    }
    Ok(Sites {
        hub,
        hub_js,
        edges,
        _shutdown: shutdown,
    })
}

/// A command as the router writes it, with `tag` as its request id.
fn command(cluster: &str, release: &str, tag: &str) -> Bytes {
    let desired = DesiredRelease {
        api_version: ApiVersion,
        cluster: cluster.into(),
        namespace: "default".into(),
        release: release.into(),
        generation: 1,
        request_id: tag.into(),
        action: Action::Uninstall,
        chart: None,
        values: serde_json::json!({}),
        helm_values: Default::default(),
        rollback_to: None,
        atomic: false,
        requested_at: Timestamp::now(),
        request_sequence: None,
    };
    serde_json::to_vec(&desired).unwrap().into()
}

/// The request ids (tags) of the commands in a stream, in order.
async fn command_tags(js: &jetstream::Context, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(stream_payloads(js, name)
        .await?
        .iter()
        .map(|p| {
            serde_json::from_str::<DesiredRelease>(p)
                .map(|d| d.request_id)
                .unwrap_or_else(|_| format!("unreadable: {p}"))
        })
        .collect())
}

/// Payloads of every message in a stream, in order.
async fn payloads(stream: &mut Stream) -> anyhow::Result<Vec<String>> {
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(msg) = stream.get_raw_message(seq).await {
            out.push(String::from_utf8(msg.payload.to_vec())?);
        }
    }
    Ok(out)
}

async fn stream_payloads(js: &jetstream::Context, name: &str) -> anyhow::Result<Vec<String>> {
    let mut stream = js.get_stream(name).await.context(name.to_owned())?;
    payloads(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_only_their_edge_and_status_comes_back() -> anyhow::Result<()> {
    let testbed = nats_testbed();
    let sites = connect_and_set_up(&testbed).await?;
    let (c1, c2) = ("copenhagen-1", "copenhagen-2");

    let ack = sites
        .hub_js
        .publish(
            subject::cluster_commands(c1),
            command(c1, "web", "cmd-for-1"),
        )
        .await?
        .await?;
    assert_eq!(ack.stream, subject::CMD_STREAM);

    let edge1 = &sites.edges[c1].1;
    let edge2 = &sites.edges[c2].1;
    eventually(
        "command in copenhagen-1's CMD_LOCAL_copenhagen-1",
        Duration::from_secs(20),
        || async {
            let got = command_tags(edge1, &subject::cmd_local_stream(c1)).await?;
            Ok((got == ["cmd-for-1"]).then_some(()))
        },
    )
    .await?;
    assert!(
        stream_payloads(edge2, &subject::cmd_local_stream(c2))
            .await?
            .is_empty(),
        "copenhagen-2 must not receive copenhagen-1's commands"
    );

    // Into copenhagen-1's outbox at the edge; its uplink forwards it.
    edge1
        .publish(
            subject::outbox_status(c1, "default", "web"),
            "status-from-1".into(),
        )
        .await?
        .await?;
    eventually(
        "status in the hub's STATUS_HUB",
        Duration::from_secs(20),
        || async {
            let got = stream_payloads(&sites.hub_js, subject::STATUS_HUB_STREAM).await?;
            Ok((got == ["status-from-1"]).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cannot_see_or_speak_for_another_edge() -> anyhow::Result<()> {
    let testbed = nats_testbed();
    let sites = connect_and_set_up(&testbed).await?;
    let (c1, c2) = ("copenhagen-1", "copenhagen-2");
    let edge1 = &sites.edges[c1].0;
    let edge2 = &sites.edges[c2].0;

    // copenhagen-2 listens for copenhagen-1's commands; it must never get them.
    let mut foreign = edge2.subscribe(subject::cluster_commands(c1)).await?;
    // And the hub listens for status that copenhagen-2 claims comes from copenhagen-1.
    let mut hub_status = sites.hub.subscribe(subject::status_for(c1)).await?;
    edge1.flush().await?;
    edge2.flush().await?;
    sites.hub.flush().await?;
    // Interest takes a moment to cross the leaf links.
    tokio::time::sleep(Duration::from_millis(500)).await;

    sites
        .hub_js
        .publish(subject::cluster_commands(c1), command(c1, "web", "hello"))
        .await?
        .await?;
    edge2
        .publish(
            subject::release_status(c1, "default", "web"),
            "forged".into(),
        )
        .await?;
    edge1
        .publish(
            subject::release_status(c1, "default", "web"),
            "genuine".into(),
        )
        .await?;
    sites.hub.flush().await?;
    edge1.flush().await?;
    edge2.flush().await?;

    use futures::StreamExt;
    let own = &sites.edges[c1].1;
    eventually(
        "the command in copenhagen-1's CMD_LOCAL",
        Duration::from_secs(20),
        || async {
            let got = command_tags(own, &subject::cmd_local_stream(c1)).await?;
            Ok((got == ["hello"]).then_some(()))
        },
    )
    .await?;
    let status = tokio::time::timeout(Duration::from_secs(5), hub_status.next()).await?;
    assert_eq!(
        status.context("hub subscription ended")?.payload.as_ref(),
        b"genuine"
    );

    assert!(
        tokio::time::timeout(Duration::from_secs(1), foreign.next())
            .await
            .is_err(),
        "copenhagen-2 received copenhagen-1's command"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), hub_status.next())
            .await
            .is_err(),
        "the hub accepted status for copenhagen-1 sent by copenhagen-2"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut testbed = nats_testbed();
    let sites = connect_and_set_up(&testbed).await?;
    let site = "copenhagen-1";
    let edge_js = sites.edges[site].1.clone();
    const N: usize = 50;

    testbed.cut_link(site)?;

    // Meanwhile the hub keeps issuing commands (one of them published twice), and the edge
    // keeps reporting status.
    for i in 0..N {
        let headers = optikon_runtime::trace::headers(Some(&format!("cmd-{i}")));
        let release = format!("app{}", i % 5);
        let subject = subject::cluster_commands(site);
        let body = command(site, &release, &format!("cmd-{i}"));
        sites
            .hub_js
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await?
            .await?;
        if i == 7 {
            let again = sites
                .hub_js
                .publish_with_headers(subject, headers, body)
                .await?
                .await?;
            assert!(
                again.duplicate,
                "the hub must recognise the repeated message id"
            );
        }
        edge_js
            .publish(
                subject::outbox_status(site, "default", "web"),
                format!("status-{i}").into(),
            )
            .await?
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        stream_payloads(&edge_js, &subject::cmd_local_stream(site))
            .await?
            .is_empty(),
        "nothing can cross a cut link"
    );

    testbed.restore_link(site)?;

    let expected_cmds: Vec<String> = (0..N).map(|i| format!("cmd-{i}")).collect();
    eventually(
        "all commands at the edge, once each, in order",
        Duration::from_secs(60),
        || async {
            let got = command_tags(&edge_js, &subject::cmd_local_stream(site)).await?;
            if got.len() > N {
                anyhow::bail!(
                    "duplicates at the edge: {} messages for {N} commands",
                    got.len()
                );
            }
            Ok((got == expected_cmds).then_some(()))
        },
    )
    .await?;
    // Status is folded by generation and finality, not by arrival, so the uplink may send
    // a retried report after a later one; each arrives once.
    let mut expected_status: Vec<String> = (0..N).map(|i| format!("status-{i}")).collect();
    expected_status.sort();
    eventually(
        "all status at the hub, once each",
        Duration::from_secs(60),
        || async {
            let mut got = stream_payloads(&sites.hub_js, subject::STATUS_HUB_STREAM).await?;
            if got.len() > N {
                anyhow::bail!(
                    "duplicates at the hub: {} messages for {N} reports",
                    got.len()
                );
            }
            got.sort();
            Ok((got == expected_status).then_some(()))
        },
    )
    .await?;
    Ok(())
}
