//! The command line, with helm and kubectl habits (`-n`, `-l`, `-f`, `--set`, `-o`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use optikon_runtime::args::NatsArgs;

#[derive(Debug, Parser)]
#[command(
    name = "optikon",
    version,
    about = "Install, upgrade, roll back and remove Helm releases on every edge cluster a label selector matches"
)]
pub struct Cli {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Push and list charts.
    #[command(subcommand)]
    Chart(ChartCommand),
    /// Install a release on every matching cluster (upgrades where it exists).
    Install(ApplyArgs),
    /// Upgrade a release on every matching cluster (fails where it is not installed).
    Upgrade(ApplyArgs),
    /// Roll a release back to an earlier revision on every matching cluster.
    Rollback(RollbackArgs),
    /// Remove a release from every matching cluster.
    Uninstall(UninstallArgs),
    /// List releases on every cluster.
    List(ListArgs),
    /// Show a release on each cluster, with failure reasons.
    Status(StatusArgs),
    /// What became of a release on one cluster, change by change, as it reported it.
    History(HistoryArgs),
    /// List edge clusters with labels and health.
    Clusters(ClustersArgs),
    /// Change an edge cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print live request progress and release status events.
    Watch(WatchArgs),
    /// Check label selectors without any cluster.
    #[command(subcommand)]
    Selector(SelectorCommand),
    /// Show the values each cluster's release gets: the request's own, overlays, and
    /// `{{ .Cluster.Labels.KEY }}` rendered for that cluster.
    Values(ValuesArgs),
    /// Show, pause, resume or abort a rollout (a request with waves or limits).
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

#[derive(Debug, Clone, Args)]
pub struct ValuesArgs {
    pub release: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// List the rollouts the hub keeps (30 days), newest first.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a rollout's waves, state and what it waits for.
    Status {
        /// The request id `install`/`upgrade`/`rollback` printed.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Start nothing more; what started goes on.
    Pause { id: String },
    /// Go on after a pause.
    Resume { id: String },
    /// Stop for good: nothing more starts, nothing is undone (roll back with `optikon rollback`).
    Abort { id: String },
}

/// How a change reaches the matching clusters; without any of these, all at once.
#[derive(Debug, Clone, Default, Args)]
pub struct StrategyArgs {
    /// A wave: a label selector, repeated in order (`--wave ring=canary --wave ring=early`).
    /// Each matching cluster goes in the first wave it matches; the rest form a last wave.
    #[arg(long = "wave")]
    pub waves: Vec<String>,
    /// Clusters of a wave changing at once: a count or a percentage of the wave (`25%`).
    #[arg(long)]
    pub max_unavailable: Option<String>,
    /// Failed clusters that stop the rollout: a count or a percentage of all targets.
    #[arg(long)]
    pub max_failures: Option<String>,
    /// When --max-failures stops the rollout, put every cluster it changed back to the
    /// revision it ran before (uninstall where it ran none).
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// Seconds a finished wave must stay healthy before the next one starts.
    #[arg(long, value_name = "SECONDS")]
    pub soak: Option<u64>,
    /// An unreachable cluster whose turn comes: `wait` (send it; the wave waits for it) or
    /// `skip` (leave it out).
    #[arg(long, value_name = "wait|skip")]
    pub offline: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ChartCommand {
    /// Upload a chart archive (.tgz).
    Push {
        file: PathBuf,
        /// Replace a stored chart of the same name and version that has other content.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List stored charts.
    List {
        #[command(flatten)]
        output: OutputArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Release namespace on each cluster.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Label selector choosing the clusters, e.g. `Region=Europe,tier in (edge,store)`.
    #[arg(short = 'l', long = "selector", default_value = "")]
    pub selector: String,
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Return once the request is sent instead of waiting for every cluster.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for every cluster before giving up.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Change nothing: ask each matching cluster what this would change there (a
    /// server-side dry run at the edge) and show it, object by object.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Release name.
    pub release: String,
    /// A chart archive path (pushed first), a chart name from `optikon chart list`, or a
    /// `sha256:` digest.
    pub chart: String,
    /// Chart version when CHART is a name (default: the highest stored).
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Values files (YAML or JSON), merged in order. Read by helm at the edge, as
    /// `helm upgrade -f` reads them.
    #[arg(short = 'f', long = "values")]
    pub values: Vec<PathBuf>,
    /// Set values on the command line: `key=value,a.b=c,list[0]=x`.
    #[arg(long)]
    pub set: Vec<String>,
    /// Like --set, but values are always strings.
    #[arg(long)]
    pub set_string: Vec<String>,
    /// Set JSON values: `key={"a":1}`.
    #[arg(long)]
    pub set_json: Vec<String>,
    /// Set a value to a file's content: `key=path` (the file is read here and sent).
    #[arg(long)]
    pub set_file: Vec<String>,
    /// Set a literal string value: `key=a,b` keeps the comma.
    #[arg(long)]
    pub set_literal: Vec<String>,
    /// A values file only for the clusters a selector matches, after the -f files:
    /// `SELECTOR:FILE` (e.g. `Region=Europe:europe.yaml`), repeated in order.
    #[arg(long, value_name = "SELECTOR:FILE")]
    pub overlay: Vec<String>,
    /// On a cluster where it fails, undo it there, as helm's --atomic: an upgrade is rolled
    /// back to the last successful revision, an install is uninstalled.
    #[arg(long)]
    pub atomic: bool,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    pub release: String,
    /// Revision to return to (default: the one before the current).
    pub revision: Option<u32>,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub strategy: StrategyArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    pub release: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only clusters matching this label selector.
    #[arg(short = 'l', long = "selector", default_value = "")]
    pub selector: String,
    /// Only this namespace (default: all).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    pub release: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The cluster.
    #[arg(long)]
    pub cluster: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    pub release: String,
    /// Only this namespace (default: all).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ClustersArgs {
    #[arg(short = 'l', long = "selector", default_value = "")]
    pub selector: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Set (`key=value`) or remove (`key-`) labels, as `kubectl label` does.
    Label {
        name: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Also print heartbeats.
    #[arg(long)]
    pub heartbeats: bool,
}

#[derive(Debug, Subcommand)]
pub enum SelectorCommand {
    /// Print the canonical form Kubernetes would print (exit 0), or the error (exit 2).
    Parse { expr: String },
    /// Print `match` (exit 0) or `no match` (exit 1) for a set of labels.
    Match {
        expr: String,
        /// Labels as `key=value,key=value`.
        #[arg(long, default_value = "")]
        labels: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[cfg(test)]
mod tests {
    #[test]
    fn args_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
