//! The hub and edge nats-servers, configured from the templates in `nats/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use optikon_core::subject;

use crate::identity::{HubRole, NkeyUser, TlsFiles};
use crate::process::ChildProcess;
use crate::{Error, http_get};

const HUB_TEMPLATE: &str = include_str!("../../../nats/hub.conf.tmpl");
const EDGE_TEMPLATE: &str = include_str!("../../../nats/edge.conf.tmpl");
const EDGE_USER_TEMPLATE: &str = include_str!("../../../nats/edge-user.conf.tmpl");
const ROLES_TEMPLATE: &str = include_str!("../../../nats/hub-roles.conf.tmpl");
const CLIENT_USER_TEMPLATE: &str = include_str!("../../../nats/hub-client-user.conf.tmpl");

/// Replaces each `{{key}}` in `template`; fails on a placeholder left unfilled.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> Result<String, Error> {
    let mut out = template.to_owned();
    for (key, value) in values {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    if let Some(start) = out.find("{{") {
        let end = out[start..].find("}}").map_or(out.len(), |e| start + e + 2);
        return Err(Error::Config(format!(
            "placeholder {} left unfilled in a nats/ template",
            &out[start..end]
        )));
    }
    Ok(out)
}

/// What the hub's config needs to know of one edge site.
#[derive(Debug, Clone)]
pub struct EdgeCredentials {
    pub name: String,
    pub identity: NkeyUser,
    /// Whose command and status subjects the site's leaf user may use: its own cluster's
    /// (the site's name), or every cluster's (`*`) for a leaf node carrying many simulated
    /// clusters in a benchmark.
    pub clusters: ClusterScope,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterScope {
    /// The site serves the one cluster named like it.
    Own,
    /// The site's leaf node carries any number of clusters (the scale benchmark's simulated
    /// edges): its user may use every cluster's subjects, and its services share one inbox
    /// prefix, the site's.
    Any,
}

/// Passwords of the hub's roles.
pub type RolePasswords = BTreeMap<HubRole, String>;

/// The hub's config: every role's user, every edge's NKey user, TLS on the leaf listener.
pub fn hub_config(
    port: u16,
    monitor_port: u16,
    leaf_port: u16,
    store_dir: &Path,
    tls: &TlsFiles,
    roles: &RolePasswords,
    edges: &[EdgeCredentials],
) -> Result<String, Error> {
    let mut users = String::new();
    for edge in edges {
        let (token, consumer, inbox) = match edge.clusters {
            ClusterScope::Own => (
                subject::token(&edge.name),
                subject::edge_consumer(&edge.name),
                subject::edge_inbox_prefix(&edge.name),
            ),
            ClusterScope::Any => (
                "*".to_owned(),
                "*".to_owned(),
                subject::edge_inbox_prefix(&edge.name),
            ),
        };
        let values = BTreeMap::from([
            ("name", edge.name.clone()),
            ("nkey", edge.identity.public_key.clone()),
            ("token", token),
            ("consumer", consumer),
            ("inbox", inbox),
        ]);
        users.push_str(&render(EDGE_USER_TEMPLATE, &values)?);
    }
    let password = |role: HubRole| {
        roles
            .get(&role)
            .cloned()
            .ok_or_else(|| Error::Config(format!("no password for hub role {}", role.user())))
    };
    let mut client_users = String::new();
    for role in [HubRole::Gateway, HubRole::Operator] {
        let values = BTreeMap::from([
            ("user", role.user().to_owned()),
            ("password", password(role)?),
        ]);
        client_users.push_str(&render(CLIENT_USER_TEMPLATE, &values)?);
    }
    let role_values = BTreeMap::from([
        ("router_password", password(HubRole::Router)?),
        ("chart_ingest_password", password(HubRole::ChartIngest)?),
        ("proximity_dns_password", password(HubRole::ProximityDns)?),
        ("admin_password", password(HubRole::Admin)?),
        ("client_users", client_users),
    ]);
    let role_users = render(ROLES_TEMPLATE, &role_values)?;
    let values = BTreeMap::from([
        ("port", port.to_string()),
        ("monitor_port", monitor_port.to_string()),
        ("leaf_port", leaf_port.to_string()),
        ("store_dir", store_dir.display().to_string()),
        ("tls_cert", tls.cert.display().to_string()),
        ("tls_key", tls.key.display().to_string()),
        ("sys_password", random_secret()),
        ("role_users", role_users),
        ("edge_users", users),
    ]);
    render(HUB_TEMPLATE, &values)
}

/// An edge leaf node's config; it dials the hub at `hub_leaf_port` over TLS as `identity`.
#[allow(clippy::too_many_arguments)]
pub fn edge_config(
    name: &str,
    port: u16,
    monitor_port: u16,
    store_dir: &Path,
    hub_leaf_port: u16,
    identity: &NkeyUser,
    ca_file: &Path,
    local_password: &str,
) -> Result<String, Error> {
    let values = BTreeMap::from([
        ("name", name.to_owned()),
        ("domain", name.to_owned()),
        ("port", port.to_string()),
        ("monitor_port", monitor_port.to_string()),
        ("store_dir", store_dir.display().to_string()),
        ("hub_leaf_port", hub_leaf_port.to_string()),
        ("nkey_seed", identity.seed.clone()),
        ("ca_file", ca_file.display().to_string()),
        ("local_password", local_password.to_owned()),
    ]);
    render(EDGE_TEMPLATE, &values)
}

pub fn random_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A running nats-server.
#[derive(Debug)]
pub struct NatsServer {
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    pub config: PathBuf,
    process: ChildProcess,
}

impl NatsServer {
    /// Writes `config_text` to `dir/<name>.conf`, starts the server and waits until its
    /// JetStream answers health checks.
    pub fn start(
        binary: &Path,
        name: &str,
        dir: &Path,
        config_text: &str,
        port: u16,
        monitor_port: u16,
    ) -> Result<Self, Error> {
        let config = dir.join(format!("{name}.conf"));
        std::fs::write(&config, config_text)
            .map_err(|e| Error::io(format!("write {}", config.display()), e))?;
        let mut command = Command::new(binary);
        command.arg("-c").arg(&config);
        let process = ChildProcess::spawn(
            &format!("nats-server {name}"),
            command,
            &dir.join(format!("{name}.log")),
        )?;
        let mut server = NatsServer {
            name: name.to_owned(),
            port,
            monitor_port,
            config,
            process,
        };
        server.wait_healthy(Duration::from_secs(30))?;
        Ok(server)
    }

    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            if let Ok((200, _)) = http_get(self.monitor_port, "/healthz?js-enabled-only=true") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "nats-server {} not healthy after {timeout:?}; log: {}",
                    self.name,
                    self.process.log().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Names of the leaf nodes connected to this server (from the monitoring port).
    pub fn connected_leafs(&self) -> Result<Vec<String>, Error> {
        let (status, body) = http_get(self.monitor_port, "/leafz")?;
        if status != 200 {
            return Err(Error::Config(format!("/leafz answered {status}")));
        }
        let value: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| Error::Config(format!("/leafz is not JSON: {e}")))?;
        Ok(value["leafs"]
            .as_array()
            .map(|leafs| {
                leafs
                    .iter()
                    .filter_map(|l| l["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops and starts the server again with the same config and store (a hub restart).
    pub fn restart(&mut self, binary: &Path) -> Result<(), Error> {
        self.process.stop(Duration::from_secs(10));
        let mut command = Command::new(binary);
        command.arg("-c").arg(&self.config);
        let log = self.process.log().to_owned();
        self.process = ChildProcess::spawn(self.process.name(), command, &log)?;
        self.wait_healthy(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfilled_placeholders_are_reported() {
        let err = render("a {{x}} b {{y}}", &BTreeMap::from([("x", "1".to_owned())])).unwrap_err();
        assert!(err.to_string().contains("{{y}}"), "{err}");
    }

    #[test]
    fn edge_users_reach_only_their_own_subjects() {
        let edge = |name: &str, clusters| EdgeCredentials {
            name: name.into(),
            identity: NkeyUser::generate().unwrap(),
            clusters,
        };
        let edges = [
            edge("copenhagen-1", ClusterScope::Own),
            edge("copenhagen-2", ClusterScope::Own),
            edge("sim-leaf-1", ClusterScope::Any),
        ];
        let roles = HubRole::ALL.iter().map(|r| (*r, random_secret())).collect();
        let tls = TlsFiles {
            ca: "/ca".into(),
            cert: "/cert".into(),
            key: "/key".into(),
        };
        let conf = hub_config(1, 2, 3, Path::new("/s"), &tls, &roles, &edges).unwrap();
        assert!(conf.contains("\"$JS.hub.API.CONSUMER.MSG.NEXT.CMD.edge-copenhagen-1\""));
        assert!(conf.contains("\"optikon.status.copenhagen-2.release.>\""));
        assert!(conf.contains("\"_INBOX_copenhagen-1.>\""));
        assert!(conf.contains(&edges[0].identity.public_key));
        assert!(
            !conf.contains(&edges[0].identity.seed),
            "the hub never holds a seed"
        );
        // No edge may use the JetStream API beyond pulling, nor every cluster's subjects.
        assert!(!conf.contains("\"$JS.hub.API.>\""));
        // Only the five hub roles that need it hear the shared inbox prefix.
        assert_eq!(conf.matches("\"_INBOX.>\"").count(), 5);
        // Only the leaf node carrying simulated clusters may use any cluster's subjects.
        assert_eq!(conf.matches("\"optikon.status.*.release.>\"").count(), 1);
    }
}
