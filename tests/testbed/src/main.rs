//! `optikon-testbed`: run the test bed from a shell.
//!
//! `up` starts it in the foreground until Ctrl-C; `cut`/`restore` drop and bring back an edge's
//! link to the hub through the control socket of a running `up`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use optikon_testbed::{Site, Testbed, TestbedConfig};

#[derive(Parser)]
#[command(about = "Real NATS hub, edge leaf nodes and Kubernetes clusters on loopback")]
struct Cli {
    /// Directory for configs, stores, logs and the control socket.
    #[arg(
        long,
        env = "OPTIKON_TESTBED_DIR",
        default_value = ".run/testbed",
        global = true
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start everything and keep it running until Ctrl-C.
    Up {
        /// An edge site as `name:key=value,key=value`; repeat. Default: the three demo sites.
        #[arg(long = "site")]
        sites: Vec<String>,
        /// Only NATS, no Kubernetes clusters.
        #[arg(long)]
        no_clusters: bool,
        /// Also start Optikon's services.
        #[arg(long)]
        services: bool,
    },
    /// Cut an edge site's link to the hub.
    Cut { site: String },
    /// Restore an edge site's link to the hub.
    Restore { site: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up {
            sites,
            no_clusters,
            services,
        } => up(&cli.dir, sites, !no_clusters, services),
        Cmd::Cut { site } => control(&cli.dir, &format!("cut {site}")),
        Cmd::Restore { site } => control(&cli.dir, &format!("restore {site}")),
    }
}

fn up(dir: &Path, sites: Vec<String>, clusters: bool, services: bool) -> anyhow::Result<()> {
    let sites = if sites.is_empty() {
        Site::demo()
    } else {
        sites
            .iter()
            .map(|s| Site::parse(s).map_err(anyhow::Error::msg))
            .collect::<Result<_, _>>()
            .context("bad --site")?
    };
    if dir.join("control.sock").exists() && UnixStream::connect(dir.join("control.sock")).is_ok() {
        bail!(
            "a test bed already runs in {}; stop it first",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    let dir = std::path::absolute(dir)?;
    println!(
        "starting hub + {} edge site(s){} in {} ...",
        sites.len(),
        if clusters {
            " with Kubernetes clusters"
        } else {
            ""
        },
        dir.display()
    );
    let testbed = Testbed::start(TestbedConfig {
        sites,
        clusters,
        services,
        dir: Some(dir.clone()),
        keep_dir: true,
        multi_cluster_sites: false,
    })?;
    print_info(&testbed);
    let testbed = Arc::new(Mutex::new(testbed));

    let socket = dir.join("control.sock");
    let listener = UnixListener::bind(&socket).context("bind control socket")?;
    let shared = testbed.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = serve_control(&shared, stream);
        }
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })?;
    println!("stopping ...");
    let _ = std::fs::remove_file(&socket);
    drop(testbed);
    Ok(())
}

fn print_info(testbed: &Testbed) {
    let info = testbed.info();
    println!("hub       {}  (monitor {})", info.hub.url, info.hub.monitor);
    for edge in &info.edges {
        let labels: Vec<String> = edge
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("edge      {}  [{}]", edge.name, labels.join(","));
        println!("  nats        {}", edge.nats.url);
        if let Some(kubeconfig) = &edge.kubeconfig {
            println!("  kubeconfig  {}", kubeconfig.display());
        }
        if let Some(address) = testbed.dns_address(Some(&edge.name)) {
            println!("  dns         {address}");
        }
    }
    for service in &testbed.services {
        println!(
            "service   {}  (log {})",
            service.spec.name,
            service.log().display()
        );
    }
    if let Some(url) = testbed.gateway_url() {
        println!("gateway   {url}");
    }
    if let Some(address) = testbed.dns_address(None) {
        println!(
            "dns       {address}  (hub; names <service>.<namespace>.{})",
            optikon_testbed::services::TESTBED_DNS_DOMAIN
        );
    }
    println!("details   {}", info.dir.join("testbed.json").display());
    let cli = optikon_testbed::services::service_bin_dir()
        .map(|d| d.join("optikon").display().to_string())
        .unwrap_or_else(|_| "optikon".into());
    println!();
    println!("ready. In another shell:");
    println!("  export OPTIKON_NATS_URL='{}'", info.hub.url);
    println!("  {cli} clusters");
    println!("  {cli} list");
    if let Some(url) = testbed.gateway_url() {
        println!("or open the Edge Manager: {url}");
    }
    if let Some(address) = testbed.dns_address(None) {
        println!(
            "or ask proximity DNS: dig -p {} @{} <service>.<namespace>.{}",
            address.port(),
            address.ip(),
            optikon_testbed::services::TESTBED_DNS_DOMAIN
        );
    }
}

fn serve_control(testbed: &Mutex<Testbed>, stream: UnixStream) -> anyhow::Result<()> {
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut testbed = testbed.lock().expect("test bed lock");
    let result = match line.trim().split_once(' ') {
        Some(("cut", site)) => testbed.cut_link(site),
        Some(("restore", site)) => testbed.restore_link(site),
        _ => Err(optikon_testbed::Error::Config(format!(
            "unknown control command {:?}",
            line.trim()
        ))),
    };
    let mut stream = stream;
    match result {
        Ok(()) => writeln!(stream, "ok")?,
        Err(e) => writeln!(stream, "error: {e}")?,
    }
    Ok(())
}

fn control(dir: &Path, command: &str) -> anyhow::Result<()> {
    let socket = dir.join("control.sock");
    let mut stream = UnixStream::connect(&socket).with_context(|| {
        format!(
            "no running test bed at {} (start one with `optikon-testbed up`)",
            socket.display()
        )
    })?;
    writeln!(stream, "{command}")?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let answer = answer.trim();
    if answer == "ok" {
        println!("{command}: done");
        Ok(())
    } else {
        bail!("{command}: {answer}")
    }
}
