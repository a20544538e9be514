//! The test bed's identities: a CA and the hub's certificate for TLS leaf links, an NKey per
//! edge site, and a password per hub role.

use std::path::{Path, PathBuf};

use crate::Error;

/// Files of the test bed's TLS set-up: edges trust `ca`, the hub's leafnode listener
/// presents `cert` (valid for 127.0.0.1 and localhost).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a fresh CA and a server certificate signed by it, written under `dir`.
pub fn make_tls(dir: &Path) -> Result<TlsFiles, Error> {
    let tls = |e: rcgen::Error| Error::Config(format!("make the test bed's certificates: {e}"));
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Optikon test bed CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(tls)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(tls)?;

    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(tls)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Optikon hub");
    let key = rcgen::KeyPair::generate().map_err(tls)?;
    let cert = params.signed_by(&key, &ca).map_err(tls)?;

    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("hub-cert.pem"),
        key: dir.join("hub-key.pem"),
    };
    for (path, text) in [
        (&files.ca, ca.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
    }
    Ok(files)
}

/// An edge site's NATS identity: an NKey user. The seed stays at the site (in its leaf
/// node's config); the hub knows only the public key.
#[derive(Debug, Clone)]
pub struct NkeyUser {
    pub public_key: String,
    pub seed: String,
}

impl NkeyUser {
    pub fn generate() -> Result<Self, Error> {
        let pair = nkeys::KeyPair::new_user();
        let seed = pair
            .seed()
            .map_err(|e| Error::Config(format!("make an NKey seed: {e}")))?;
        Ok(NkeyUser {
            public_key: pair.public_key(),
            seed,
        })
    }
}

/// The hub's roles, each a NATS user of its own with only what it needs (the permissions
/// are in `nats/hub-roles.conf.tmpl`; docs/nats.md has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum HubRole {
    /// selector-router: owns the hub's topology, requests, desired state, commands, folds.
    Router,
    /// chart-ingest: charts in, chart fetches out.
    ChartIngest,
    /// proximity-dns at the hub: reads the fleet's table, answers sites' DNS questions.
    ProximityDns,
    /// The gateway: an operator's client on the web.
    Gateway,
    /// A person or script with the `optikon` or `nats` CLI.
    Operator,
    /// The test bed's own view of the hub, for tests that check what happened inside it;
    /// no service uses it.
    Admin,
}

impl HubRole {
    pub const ALL: [HubRole; 6] = [
        HubRole::Router,
        HubRole::ChartIngest,
        HubRole::ProximityDns,
        HubRole::Gateway,
        HubRole::Operator,
        HubRole::Admin,
    ];

    /// The role's user name in the hub's config.
    pub fn user(self) -> &'static str {
        match self {
            HubRole::Router => "router",
            HubRole::ChartIngest => "chart-ingest",
            HubRole::ProximityDns => "proximity-dns",
            HubRole::Gateway => "gateway",
            HubRole::Operator => "operator",
            HubRole::Admin => "admin",
        }
    }
}
