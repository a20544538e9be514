//! The runtime every Optikon service starts with: flags, telemetry, shutdown, NATS.
//!
//! A service's `main` is a few lines: parse its args (which flatten [`args::NatsArgs`] and
//! [`args::TelemetryArgs`]), call [`telemetry::init`], connect with [`connect`], and run its
//! library until [`shutdown::Shutdown`] fires.

pub mod args;
pub mod chart_fetch;
pub mod kv;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace;

use std::time::Duration;

pub use async_nats;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// How long a service waits for JetStream to acknowledge a store or answer an API call.
/// The client's default of 5 s is too short for a server that a fan-out to thousands of
/// clusters keeps busy: a write given up on is sent again, which adds load exactly when the
/// server has the most, and a command or status given up on waits out an ack wait (30 s)
/// before it is offered again.
pub const JETSTREAM_ACK_WAIT: Duration = Duration::from_secs(30);

/// JetStream on `client`, waiting [`JETSTREAM_ACK_WAIT`] for acknowledgements.
pub fn jetstream(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::ContextBuilder::new()
        .timeout(JETSTREAM_ACK_WAIT)
        .build(client)
}

/// What every service's `main` does first: install telemetry, listen for the shutdown
/// signals, and connect to NATS.
pub async fn start_service(
    nats: &args::NatsArgs,
    telemetry_args: &args::TelemetryArgs,
    name: &'static str,
) -> Result<(async_nats::Client, shutdown::Shutdown), ConnectError> {
    telemetry::init(telemetry_args, name);
    let shutdown = shutdown::Shutdown::on_signals();
    let client = connect(nats, name).await?;
    Ok((client, shutdown))
}

/// [`start_service`] for a service at an edge site serving `cluster`: its connection uses
/// the site's inbox prefix, the only one under which the hub sends replies over the link.
pub async fn start_edge_service(
    nats: &args::NatsArgs,
    telemetry_args: &args::TelemetryArgs,
    name: &'static str,
    cluster: &str,
) -> Result<(async_nats::Client, shutdown::Shutdown), ConnectError> {
    telemetry::init(telemetry_args, name);
    let shutdown = shutdown::Shutdown::on_signals();
    let prefix = optikon_core::subject::edge_inbox_prefix(cluster);
    let client = connect_url_with(&nats.nats_url, name, Some(&prefix)).await?;
    Ok((client, shutdown))
}

/// Connects to NATS, retrying the first connection so services can start before the server.
pub async fn connect(
    args: &args::NatsArgs,
    name: &str,
) -> Result<async_nats::Client, ConnectError> {
    connect_url(&args.nats_url, name).await
}

/// Connects to `url`; credentials may be given in it as `nats://user:password@host:port`.
pub async fn connect_url(url: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    connect_url_with(url, name, None).await
}

/// [`connect_url`] with the inbox prefix replies come back under (`None`: `_INBOX`).
pub async fn connect_url_with(
    url: &str,
    name: &str,
    inbox_prefix: Option<&str>,
) -> Result<async_nats::Client, ConnectError> {
    let (address, credentials) = split_credentials(url);
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = credentials {
        // async-nats does not take credentials from the URL itself.
        options = async_nats::ConnectOptions::with_user_and_password(user, password);
    }
    if let Some(prefix) = inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    options
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(address.as_str())
        .await
        .map_err(|source| ConnectError::Connect {
            url: redact(url),
            source,
        })
}

/// Splits `scheme://user:password@rest` into `scheme://rest` and the credentials.
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    if let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@'))
        && at > scheme
    {
        let userinfo = &url[scheme + 3..at];
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let address = format!("{}{}", &url[..scheme + 3], &url[at + 1..]);
        return (address, Some((user.to_owned(), password.to_owned())));
    }
    (url.to_owned(), None)
}

/// A NATS URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_come_out_of_the_url() {
        let (address, creds) = super::split_credentials("nats://hub:pw@127.0.0.1:4222");
        assert_eq!(address, "nats://127.0.0.1:4222");
        assert_eq!(creds, Some(("hub".into(), "pw".into())));
        assert_eq!(super::split_credentials("nats://127.0.0.1:4222").1, None);
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            super::redact("nats://hub:s3cret@127.0.0.1:4222"),
            "nats://hub:***@127.0.0.1:4222"
        );
        assert_eq!(
            super::redact("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
    }
}
