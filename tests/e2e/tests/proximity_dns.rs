//! Proximity DNS on the real test bed, asked with a real DNS client (`dig`).
//!
//! Three sites with positions: Copenhagen runs nothing, Berlin and Lisbon run `web` in
//! namespace `shop`. The hub's DNS stands in Copenhagen and forwards other names to a real
//! NSD serving a zone file. The test checks that the nearest site answers, that a cut-off
//! site drops out of the hub's answers within its heartbeat timeout but still answers for
//! itself, that unknown names get NXDOMAIN, and that a malformed query gets FORMERR and the
//! server keeps serving.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use optikon_e2e::{eventually, kube_client, wait_until_healthy};
use optikon_testbed::dns::{Nsd, dig};
use optikon_testbed::services::{TESTBED_DNS_DOMAIN, TESTBED_HEARTBEAT_SECONDS};
use optikon_testbed::{Site, Testbed, TestbedConfig};

const BERLIN_IP: &str = "192.0.2.10";
const LISBON_IP: &str = "192.0.2.20";
const UPSTREAM_IP: &str = "192.0.2.99";

fn sites() -> Vec<Site> {
    vec![
        Site::new("copenhagen-1", &[("lat", "55.68"), ("long", "12.57")]),
        Site::new("berlin-1", &[("lat", "52.52"), ("long", "13.40")]),
        Site::new("lisbon-1", &[("lat", "38.72"), ("long", "9.14W")]),
    ]
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter()
        .map(|ip| ip.parse().expect("test address"))
        .collect()
}

/// Waits until `server` answers `name` with exactly `expected`; returns how long it took.
async fn answers(
    server: SocketAddr,
    name: &str,
    expected: &[&str],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let expected = ips(expected);
    eventually(
        &format!("{server} answering {name} with {expected:?}"),
        timeout,
        || {
            let expected = expected.clone();
            async move {
                let answer = dig(server, name, "A")?;
                Ok((answer.status == "NOERROR" && answer.addresses == expected).then_some(()))
            }
        },
    )
    .await?;
    Ok(started.elapsed())
}

async fn run_web(testbed: &Testbed, site: &str, ip: &str) -> anyhow::Result<()> {
    let client = kube_client(testbed, site).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await?;
    let service = Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            external_ips: Some(vec![ip.into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Service>::namespaced(client, "shop")
        .create(&PostParams::default(), &service)
        .await
        .with_context(|| format!("create Service shop/web at {site}"))?;
    Ok(())
}

/// A query with a whole header and a question cut off in the middle of its name.
const MALFORMED: [u8; 17] = [
    0x4f, 0x4b, // id
    0x01, 0x00, // a standard query, recursion desired
    0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // one question, nothing else
    0x03, b'w', b'e', b'b', 0x04, // "web", then a label that never comes
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nearest_healthy_site_answers() -> anyhow::Result<()> {
    let config = TestbedConfig {
        sites: sites(),
        clusters: true,
        services: true,
        ..TestbedConfig::default()
    };
    let mut testbed = tokio::task::spawn_blocking(move || Testbed::start(config))
        .await?
        .context("the test bed did not start")?;
    // A real NSD, from Debian, serving `example.test` from a zone file: the hub's upstream.
    let nsd = Nsd::start(
        &testbed.dir().join("nsd"),
        "example.test",
        60,
        &format!("www IN A {UPSTREAM_IP}\n"),
    )?;
    // The hub's DNS stands in Copenhagen and forwards what is not its own to NSD.
    let hub_dns = testbed
        .service_mut("proximity-dns")
        .context("hub DNS runs")?;
    hub_dns.set_env("OPTIKON_DNS_LAT", "55.68N");
    hub_dns.set_env("OPTIKON_DNS_LONG", "12.57E");
    hub_dns.set_env("OPTIKON_DNS_UPSTREAM", &nsd.address.to_string());
    hub_dns.restart()?;
    wait_until_healthy(&testbed).await?;

    let hub = testbed.dns_address(None).context("hub DNS address")?;
    let at = |site: &str| testbed.dns_address(Some(site)).context("site DNS address");
    let (copenhagen, berlin, lisbon) = (at("copenhagen-1")?, at("berlin-1")?, at("lisbon-1")?);
    let web = format!("web.shop.{TESTBED_DNS_DOMAIN}");

    // Nobody runs it yet.
    let settle = Duration::from_secs(60);
    eventually("NXDOMAIN for a service no site runs", settle, || async {
        Ok((dig(hub, &web, "A")?.status == "NXDOMAIN").then_some(()))
    })
    .await?;

    run_web(&testbed, "berlin-1", BERLIN_IP).await?;
    run_web(&testbed, "lisbon-1", LISBON_IP).await?;

    // From Copenhagen, Berlin (355 km) is nearer than Lisbon (2,480 km): at the hub, and at
    // the Copenhagen site, which runs nothing itself and asks the hub as itself.
    answers(hub, &web, &[BERLIN_IP], settle).await?;
    answers(copenhagen, &web, &[BERLIN_IP], settle).await?;
    // Each site that runs it answers with itself.
    answers(berlin, &web, &[BERLIN_IP], settle).await?;
    answers(lisbon, &web, &[LISBON_IP], settle).await?;
    // Same name in capitals: DNS names are case-blind.
    ensure!(dig(hub, &web.to_uppercase(), "A")?.addresses == ips(&[BERLIN_IP]));

    // A name no site runs, and names of the wrong shape, are NXDOMAIN; a type the Service
    // has no address of is NODATA (NOERROR, nothing in the answer).
    for name in [
        format!("nosuch.shop.{TESTBED_DNS_DOMAIN}"),
        format!("web.nosuch.{TESTBED_DNS_DOMAIN}"),
        format!("a.web.shop.{TESTBED_DNS_DOMAIN}"),
        format!("shop.{TESTBED_DNS_DOMAIN}"),
    ] {
        for server in [hub, copenhagen] {
            let answer = dig(server, &name, "A")?;
            ensure!(
                answer.status == "NXDOMAIN",
                "{name} at {server}: {answer:?}"
            );
        }
    }
    let aaaa = dig(hub, &web, "AAAA")?;
    ensure!(
        aaaa.status == "NOERROR" && aaaa.addresses.is_empty(),
        "{aaaa:?}"
    );

    // Names outside the base domain go to the upstream, at the hub.
    let forwarded = dig(hub, "www.example.test", "A")?;
    ensure!(
        forwarded.addresses == ips(&[UPSTREAM_IP]),
        "forwarded to NSD: {forwarded:?}"
    );

    // A malformed query gets FORMERR, and the server goes on answering.
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(3)))?;
    socket.send_to(&MALFORMED, hub)?;
    let mut reply = [0u8; 512];
    let (n, _) = socket
        .recv_from(&mut reply)
        .context("no answer to a malformed query")?;
    ensure!(
        n >= 12 && reply[..2] == MALFORMED[..2],
        "reply {:?}",
        &reply[..n]
    );
    let rcode = reply[3] & 0x0f;
    ensure!(
        rcode == 1,
        "malformed query answered with rcode {rcode}, not FORMERR (1)"
    );
    ensure!(
        dig(hub, &web, "A")?.addresses == ips(&[BERLIN_IP]),
        "still serving"
    );

    // Berlin's link is cut: within its heartbeat timeout (three intervals) the hub answers
    // Lisbon, and so does the Copenhagen site. Berlin still answers for itself.
    let timeout = Duration::from_secs(3 * TESTBED_HEARTBEAT_SECONDS);
    let cut_at = Instant::now();
    testbed.cut_link("berlin-1")?;
    answers(hub, &web, &[LISBON_IP], timeout + Duration::from_secs(10)).await?;
    let moved = cut_at.elapsed();
    eprintln!("the hub's answer moved to Lisbon {moved:?} after Berlin's link was cut");
    ensure!(
        moved <= timeout + Duration::from_secs(TESTBED_HEARTBEAT_SECONDS),
        "the answer moved {moved:?} after the cut; the heartbeat timeout is {timeout:?}"
    );
    answers(copenhagen, &web, &[LISBON_IP], Duration::from_secs(10)).await?;
    ensure!(
        dig(berlin, &web, "A")?.addresses == ips(&[BERLIN_IP]),
        "a cut-off site answers for itself"
    );
    // What a cut-off site does not run itself, it cannot ask for: SERVFAIL, not a lie.
    let other = dig(berlin, &format!("nosuch.shop.{TESTBED_DNS_DOMAIN}"), "A")?;
    ensure!(other.status == "SERVFAIL", "{other:?}");

    // The link returns: Berlin answers again once its heartbeats arrive.
    testbed.restore_link("berlin-1")?;
    answers(hub, &web, &[BERLIN_IP], settle).await?;

    // An operator moves Copenhagen's site to Lisbon's neighbourhood (its registry labels):
    // the hub now measures the site's questions from there.
    let out = optikon_e2e::optikon(
        &testbed,
        &[
            "cluster",
            "label",
            "copenhagen-1",
            "lat=38.70",
            "long=9.10W",
        ],
    )?;
    if out.code != 0 {
        bail!("relabel copenhagen-1: {}", out.stderr);
    }
    answers(copenhagen, &web, &[LISBON_IP], settle).await?;
    drop(nsd);
    Ok(())
}
