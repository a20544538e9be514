//! Real DNS parts for proximity DNS's tests and benchmark: Debian's `dig` to ask, and
//! Debian's NSD, an authoritative server answering one zone from a zone file on a loopback
//! port (proximity DNS's upstream in tests, and what the benchmark compares it with).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::process::ChildProcess;

/// What `dig` said: the status (`NOERROR`, `NXDOMAIN`, …) and the answer's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigAnswer {
    pub status: String,
    pub addresses: Vec<IpAddr>,
}

/// Asks `server` for `name` of `record_type` with `dig`, once, waiting at most 2 s.
pub fn dig(server: SocketAddr, name: &str, record_type: &str) -> Result<DigAnswer, Error> {
    let out = Command::new("dig")
        .args([
            "+time=2",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
            "-p",
        ])
        .arg(server.port().to_string())
        .arg(format!("@{}", server.ip()))
        .args([name, record_type])
        .output()
        .map_err(|e| {
            Error::io(
                "run dig (Debian's dnsutils: run scripts/install-packages)",
                e,
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map(str::to_owned)
        .ok_or_else(|| Error::Config(format!("dig @{server} {name}: no status in {text:?}")))?;
    let addresses = text
        .lines()
        .filter(|line| !line.starts_with(';'))
        .filter_map(|line| line.split_whitespace().last()?.parse().ok())
        .collect();
    Ok(DigAnswer { status, addresses })
}

/// NSD while it runs; stopped (with the processes it forks) when dropped.
#[derive(Debug)]
pub struct Nsd {
    pub address: SocketAddr,
    config: PathBuf,
    _process: ChildProcess,
}

impl Nsd {
    /// Serves zone `origin` (e.g. `example.test`) under `dir`: an SOA and NS record with
    /// `ttl`, then `records`, zone-file lines such as `www IN A 192.0.2.1`.
    pub fn start(dir: &Path, origin: &str, ttl: u32, records: &str) -> Result<Nsd, Error> {
        let binary = ["/usr/sbin/nsd", "nsd"]
            .into_iter()
            .find(|p| Command::new(p).arg("-v").output().is_ok())
            .ok_or_else(|| {
                Error::Config("nsd not found: run scripts/install-packages (Debian's nsd)".into())
            })?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let zone = format!(
            "$ORIGIN {origin}.\n$TTL {ttl}\n\
             @ IN SOA ns.{origin}. hostmaster.{origin}. 1 60 30 600 {ttl}\n\
             @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}"
        );
        let port = crate::free_udp_and_tcp_port()?;
        let d = dir.display();
        // One server process, as proximity-dns is one process; no response rate limiting
        // (Debian's NSD limits each client to 200 answers a second by default, and a test
        // or benchmark is one client).
        let config = format!(
            "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  zonesdir: \"{d}\"\n  \
             pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  username: \"\"\n  chroot: \"\"\n  \
             xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
             logfile: \"{d}/nsd.log\"\n  server-count: 1\n  \
             rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: {origin}\n  zonefile: \"{origin}.zone\"\n"
        );
        let config_path = dir.join("nsd.conf");
        for (path, text) in [
            (dir.join(format!("{origin}.zone")), zone),
            (config_path.clone(), config),
        ] {
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        }
        let mut command = Command::new(binary);
        command.args(["-d", "-c"]).arg(&config_path);
        let process = ChildProcess::spawn("nsd", command, &dir.join("nsd.out"))?;
        Ok(Nsd {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            config: config_path,
            _process: process,
        })
    }

    /// The config file, which every process NSD forks names on its command line.
    pub fn config(&self) -> &Path {
        &self.config
    }
}
