//! Renders a chart with the real Helm template engine: `helm template` against the target
//! cluster's version and API list, in a scratch directory that goes away afterwards.
//!
//! Values are never read here. The release request's files and `--set` flags are written
//! out and handed to helm as they came, so helm types them (YAML 1.1: `flag: no` is false).
//! The values the release record keeps (`config`, the chart's own values) are read by helm
//! too: a second, tiny `helm template` of a probe chart prints them as helm holds them.
//!
//! `helm template` renders NOTES.txt but never prints it; the release record keeps it
//! (`helm get notes`). So the chart gets one more template that includes the NOTES text,
//! rendered by the same run, and its output is taken back out of the manifest.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use optikon_core::values::HelmValues;
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::ClusterError;

/// `helm template` of a small chart takes well under a second; this only stops a hung one.
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest failure text kept from helm's stderr.
const MAX_REASON_CHARS: usize = 4000;
/// Most of helm's standard output read: far above any release Kubernetes could store (a
/// release record is at most 1 MiB compressed), so only a runaway chart meets it.
const MAX_OUTPUT_BYTES: usize = 64 << 20;
/// Most of helm's error output read.
const MAX_STDERR_BYTES: usize = 256 << 10;
/// The executor's environment that helm may see: how to reach the cluster and the network.
/// Nothing else (credentials for other systems, HELM_* settings) reaches helm.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "TMPDIR",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// What to render, besides the chart.
#[derive(Debug, Clone)]
pub(crate) struct RenderRequest<'a> {
    pub release: &'a str,
    pub namespace: &'a str,
    /// `gitVersion` from the API server's `/version`, e.g. `v1.34.4`.
    pub kube_version: &'a str,
    /// `group/version` and `group/version/Kind` entries the cluster serves.
    pub api_versions: &'a [String],
    pub is_upgrade: bool,
    /// Values given as a JSON object: helm's first values file.
    pub values: &'a Map<String, Value>,
    /// Values files and flags as the user gave them, after `values`.
    pub helm_values: &'a HelmValues,
    /// The kubeconfig helm's `lookup` reaches the cluster with; `None`: helm's own default
    /// (`KUBECONFIG`, else the pod's service account), which is the executor's too.
    pub kubeconfig: Option<&'a Path>,
}

/// What helm made of a chart and its values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rendered {
    /// `helm template` output: every manifest, hooks and `crds/` included.
    pub manifest: String,
    /// The user's values merged, as helm keeps them in a release record (`helm get values`).
    pub config: Map<String, Value>,
    /// The chart's `values.yaml` as helm reads it (the record's `chart.values`).
    pub chart_values: Map<String, Value>,
    /// `Chart.yaml` as helm's YAML reader types it, before helm's loader makes strings of
    /// its scalars (`appVersion: 1.10` is the number 1.1 here).
    pub chart_yaml: Map<String, Value>,
    /// The chart's `templates/NOTES.txt` rendered (empty without one), as helm stores it.
    pub notes: String,
}

/// The chart's own NOTES, as helm finds them (a subchart's are not rendered, as with helm's
/// default `--render-subchart-notes=false`).
const NOTES_FILE: &str = "templates/NOTES.txt";
/// The template added to print the NOTES, and the partial holding NOTES.txt's text.
const NOTES_TEMPLATE: &str = "templates/optikon.dev-rendered-notes.yaml";
const NOTES_PARTIAL: &str = "templates/_optikon.dev-rendered-notes.tpl";
const NOTES_DEFINE: &str = "optikon.dev/rendered-notes";

/// Adds the templates that print the chart's NOTES (`notes`, NOTES.txt's text) to the chart
/// in `chart_dir`. `Ok(false)` when that cannot be done: NOTES.txt defines templates itself,
/// and a `define` cannot hold another.
fn add_notes_template(chart_dir: &Path, notes: &[u8]) -> std::io::Result<bool> {
    let text = String::from_utf8_lossy(notes);
    if defines_templates(&text) {
        return Ok(false);
    }
    // No trim markers: the define holds NOTES.txt's text exactly.
    let partial = format!("{{{{ define \"{NOTES_DEFINE}\" }}}}{text}{{{{ end }}}}");
    std::fs::write(chart_dir.join(NOTES_PARTIAL), partial)?;
    let template = format!(
        "apiVersion: optikon.dev/v1\nkind: RenderedNotes\nnotes: \
         {{{{ include \"{NOTES_DEFINE}\" . | toJson }}}}\n"
    );
    std::fs::write(chart_dir.join(NOTES_TEMPLATE), template)?;
    Ok(true)
}

/// Whether template text has a `define` or `block` action.
fn defines_templates(text: &str) -> bool {
    text.match_indices("{{").any(|(at, _)| {
        let action = text[at + 2..].trim_start_matches('-').trim_start();
        action.starts_with("define") || action.starts_with("block")
    })
}

/// Takes the notes document out of `helm template`'s output and returns the NOTES text as
/// helm stores it (helm blanks `<no value>` in every rendered file; inside the JSON string
/// it escaped that, so it is blanked here).
fn take_notes(manifest: &mut String) -> Result<String, String> {
    let notes: String = take_document(manifest, NOTES_TEMPLATE, "notes")?;
    Ok(notes.replace("<no value>", ""))
}

/// The template added to a chart with dependencies to print the values its templates see:
/// helm keeps those (subcharts' defaults and imported values merged in) as the record's
/// chart values, where a chart without dependencies keeps its `values.yaml` as read.
const VALUES_TEMPLATE: &str = "templates/optikon.dev-rendered-values.yaml";

fn add_values_template(chart_dir: &Path) -> std::io::Result<()> {
    std::fs::write(
        chart_dir.join(VALUES_TEMPLATE),
        "apiVersion: optikon.dev/v1\nkind: RenderedValues\nvalues: {{ toJson .Values }}\n",
    )
}

/// Whether Chart.yaml declares dependencies (subcharts).
fn has_dependencies(chart_yaml: &Map<String, Value>) -> bool {
    chart_yaml
        .get("dependencies")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty())
}

/// Takes the document an added template printed out of `helm template`'s output and reads
/// its `field` (JSON, as the template wrote it with `toJson`).
fn take_document<T: serde::de::DeserializeOwned>(
    manifest: &mut String,
    template: &str,
    field: &str,
) -> Result<T, String> {
    let source = format!("/{template}\n");
    let Some(line) = manifest
        .match_indices("# Source: ")
        .map(|(at, _)| at)
        .find(|&at| {
            manifest[at..]
                .lines()
                .next()
                .is_some_and(|l| format!("{l}\n").ends_with(&source))
        })
    else {
        return Err(format!("the added template {template} printed nothing"));
    };
    let start = manifest[..line].rfind("---\n").unwrap_or(line);
    let end = manifest[line..]
        .find("\n---\n")
        .map_or(manifest.len(), |at| line + at + 1);
    let doc = manifest[start..end].to_owned();
    manifest.replace_range(start..end, "");
    let prefix = format!("{field}: ");
    let json = doc
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .ok_or_else(|| format!("the added template {template} printed no {field}"))?;
    serde_json::from_str(json).map_err(|e| format!("the added template {template} printed {e}"))
}

/// A values file or `--set-file` file written for helm: where it is, and the name the user
/// knows it by (helm's errors name the path; the user is told the name).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WrittenFile {
    pub path: PathBuf,
    pub name: String,
}

/// Writes the values into `dir` and returns helm's arguments for them, in helm's order, with
/// the files written.
pub(crate) fn values_args(
    dir: &Path,
    values: &Map<String, Value>,
    helm_values: &HelmValues,
) -> std::io::Result<(Vec<OsString>, Vec<WrittenFile>)> {
    std::fs::create_dir_all(dir)?;
    let mut args: Vec<OsString> = Vec::new();
    let mut written = Vec::new();
    let mut write = |file: &str, name: &str, text: &[u8]| -> std::io::Result<PathBuf> {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        written.push(WrittenFile {
            path: path.clone(),
            name: name.to_owned(),
        });
        Ok(path)
    };
    if !values.is_empty() {
        let json = serde_json::to_vec(values).expect("a JSON map serializes");
        let path = write("values.json", "the request's values", &json)?;
        args.extend(["--values".into(), path.into()]);
    }
    for (i, file) in helm_values.files.iter().enumerate() {
        let path = write(
            &format!("values-{i}.yaml"),
            &file.name,
            file.text.as_bytes(),
        )?;
        args.extend(["--values".into(), path.into()]);
    }
    let flags = [
        ("--set-json", &helm_values.set_json),
        ("--set", &helm_values.set),
        ("--set-string", &helm_values.set_string),
        ("--set-literal", &helm_values.set_literal),
    ];
    for (flag, exprs) in flags {
        for expr in exprs {
            args.extend([flag.into(), expr.into()]);
        }
    }
    for (i, file) in helm_values.set_file.iter().enumerate() {
        let path = write(&format!("set-file-{i}"), &file.name, file.text.as_bytes())?;
        let mut arg = OsString::from(format!("{}=", file.key));
        arg.push(&path);
        args.extend(["--set-file".into(), arg]);
    }
    Ok((args, written))
}

/// `helm template` arguments for a chart in `chart_dir` with the given values arguments.
pub(crate) fn template_args(
    request: &RenderRequest<'_>,
    chart_dir: &Path,
    values: &[OsString],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "template".into(),
        request.release.into(),
        chart_dir.into(),
        "--namespace".into(),
        request.namespace.into(),
        "--kube-version".into(),
        request.kube_version.into(),
        "--include-crds".into(),
        // `lookup` reads the live cluster, as in `helm upgrade --install`; everything else
        // stays client-side (capabilities come from the arguments below).
        "--dry-run=server".into(),
    ];
    if let Some(kubeconfig) = request.kubeconfig {
        args.extend(["--kubeconfig".into(), kubeconfig.into()]);
    }
    args.extend(values.iter().cloned());
    if request.is_upgrade {
        args.push("--is-upgrade".into());
    }
    for api_version in request.api_versions {
        args.push("--api-versions".into());
        args.push(api_version.into());
    }
    args
}

/// The probe chart: no values of its own, so its `.Values` are exactly the user's merged
/// values; and the chart's `values.yaml` as a file, read with `fromYaml`, which is helm's own
/// values reader (the chart's render already proved that it reads).
const PROBE_CHART_YAML: &str = "apiVersion: v2\nname: optikon-values-probe\nversion: 0.0.0\n";
const PROBE_TEMPLATE: &str = "{{- dict \"config\" .Values \
    \"defaults\" (.Files.Get \"defaults.yaml\" | fromYaml) \
    \"chart\" (.Files.Get \"chart.yaml\" | fromYaml) | toJson -}}\n";

/// Writes the probe chart for a chart whose `values.yaml` is `defaults`.
fn write_probe(dir: &Path, defaults: &[u8], chart_yaml: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("templates"))?;
    std::fs::write(dir.join("Chart.yaml"), PROBE_CHART_YAML)?;
    std::fs::write(dir.join("defaults.yaml"), defaults)?;
    std::fs::write(dir.join("chart.yaml"), chart_yaml)?;
    std::fs::write(dir.join("templates/values.yaml"), PROBE_TEMPLATE)
}

/// The probe's output (after its `# Source:` line): `{"config": …, "defaults": …, "chart": …}`.
fn parse_probe(output: &str) -> Result<Probe, String> {
    let json = output
        .lines()
        .find(|l| l.starts_with('{'))
        .ok_or("the values probe printed nothing")?;
    let mut probe: Map<String, Value> =
        serde_json::from_str(json).map_err(|e| format!("the values probe printed {e}"))?;
    let mut take = |key: &str| match probe.remove(key) {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    Ok(Probe {
        config: take("config"),
        chart_values: take("defaults"),
        chart_yaml: take("chart"),
    })
}

/// What the probe read, as helm reads it.
#[derive(Debug, Clone, PartialEq)]
struct Probe {
    config: Map<String, Value>,
    chart_values: Map<String, Value>,
    chart_yaml: Map<String, Value>,
}

/// Gives the string fields of chart `metadata` the text helm's loader gives them: helm reads
/// `Chart.yaml` as YAML 1.1 and makes strings of the numbers it found, so `appVersion: 1.10`
/// is "1.1" to helm (as `helm show chart` prints it) and `version: 1.0` is "1". `chart_yaml`
/// is the file as helm's reader typed it.
pub(crate) fn type_as_helm(metadata: &mut Value, chart_yaml: &Map<String, Value>) {
    let Value::Object(metadata) = metadata else {
        return;
    };
    for (key, field) in metadata.iter_mut() {
        if let (Value::String(text), Some(Value::Number(read))) = (&*field, chart_yaml.get(key)) {
            let helms = match read.as_f64() {
                Some(float) if read.is_f64() => optikon_core::chart::helm_float_text(float),
                _ => read.to_string(),
            };
            if *text != helms {
                *field = Value::String(helms);
            }
        }
    }
}

/// Writes chart files (paths relative to the chart root) under `dir`. Paths were checked when
/// the archive was inspected; anything that would still leave `dir` is refused here too.
pub(crate) fn write_chart(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    for (path, data) in files {
        let relative = Path::new(path);
        let safe = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe || path.is_empty() {
            return Err(format!(
                "chart file path {path:?} leaves the chart directory"
            ));
        }
        let target = dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("write chart file {path}: {e}"))?;
        }
        std::fs::write(&target, data).map_err(|e| format!("write chart file {path}: {e}"))?;
    }
    Ok(())
}

/// Renders the chart whose files are given. `Ok(Err(reason))` is a rendering failure that will
/// repeat (bad template, bad values, missing dependency); `Err` is a local problem (helm
/// missing, disk full) worth a retry once fixed.
pub(crate) async fn render(
    helm: &Path,
    files: &[(String, Vec<u8>)],
    request: &RenderRequest<'_>,
) -> Result<Result<Rendered, String>, ClusterError> {
    let scratch = tempfile::Builder::new()
        .prefix("optikon-render-")
        .tempdir()
        .map_err(|e| ClusterError::io("create a scratch directory for helm", e))?;
    let chart_dir = scratch.path().join("chart");
    if let Err(reason) = write_chart(&chart_dir, files) {
        return Ok(Err(reason));
    }
    let (values, written) = values_args(
        &scratch.path().join("values"),
        request.values,
        request.helm_values,
    )
    .map_err(|e| ClusterError::io("write the values files", e))?;
    let file = |name: &str| {
        files
            .iter()
            .find(|(path, _)| path == name)
            .map(|(_, data)| data.as_slice())
    };
    let with_notes = match file(NOTES_FILE) {
        Some(notes) => add_notes_template(&chart_dir, notes)
            .map_err(|e| ClusterError::io("write the NOTES template", e))?,
        None => false,
    };
    if file(NOTES_FILE).is_some() && !with_notes {
        tracing::warn!(
            release = request.release,
            "NOTES.txt defines templates of its own; the record keeps no notes"
        );
    }
    // Printed for every chart (one line of JSON); kept only for charts with dependencies.
    add_values_template(&chart_dir)
        .map_err(|e| ClusterError::io("write the values template", e))?;
    let mut names = vec![(chart_dir.clone(), "<chart>".to_owned())];
    names.extend(written.into_iter().map(|w| (w.path, w.name)));
    let home = scratch.path().join("helm-home");

    let mut manifest =
        match run_helm(helm, &home, template_args(request, &chart_dir, &values)).await? {
            Ok(text) => text,
            Err(stderr) => return Ok(Err(failure_reason(&stderr, &names))),
        };
    let notes = if with_notes {
        match take_notes(&mut manifest) {
            Ok(notes) => notes,
            Err(reason) => return Ok(Err(reason)),
        }
    } else {
        String::new()
    };
    let seen_values: Map<String, Value> =
        match take_document(&mut manifest, VALUES_TEMPLATE, "values") {
            Ok(values) => values,
            Err(reason) => return Ok(Err(reason)),
        };

    let probe_dir = scratch.path().join("probe");
    let file = |name: &str| file(name).unwrap_or_default();
    write_probe(&probe_dir, file("values.yaml"), file("Chart.yaml"))
        .map_err(|e| ClusterError::io("write the values probe chart", e))?;
    let mut probe_args: Vec<OsString> = vec!["template".into(), "probe".into(), probe_dir.into()];
    probe_args.extend(values);
    let probe = match run_helm(helm, &home, probe_args).await? {
        Ok(text) => text,
        Err(stderr) => return Ok(Err(failure_reason(&stderr, &names))),
    };
    let probe = match parse_probe(&probe) {
        Ok(read) => read,
        Err(reason) => return Ok(Err(reason)),
    };
    let with_dependencies = has_dependencies(&probe.chart_yaml);
    Ok(Ok(Rendered {
        manifest,
        config: probe.config,
        chart_values: if with_dependencies {
            seen_values
        } else {
            probe.chart_values
        },
        chart_yaml: probe.chart_yaml,
        notes,
    }))
}

/// Runs helm with `args`, away from the host's helm settings and with only [`PASSED_ENV`]
/// of the executor's environment. `Ok(Ok(stdout))` on success, `Ok(Err(stderr))` when helm
/// refused.
async fn run_helm(
    helm: &Path,
    home: &Path,
    args: Vec<OsString>,
) -> Result<Result<String, String>, ClusterError> {
    let mut command = tokio::process::Command::new(helm);
    command.args(args).env_clear();
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .env("HOME", home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_error = |source| ClusterError::Helm {
        path: helm.to_owned(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let run = async {
        let (out, err) = tokio::join!(
            read_bounded(stdout, MAX_OUTPUT_BYTES),
            read_bounded(stderr, MAX_STDERR_BYTES)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(RENDER_TIMEOUT, run).await {
        Ok(done) => done,
        Err(_) => {
            return Ok(Err(format!(
                "Error: helm template did not finish within {}s",
                RENDER_TIMEOUT.as_secs()
            )));
        }
    };
    let status = status.map_err(spawn_error)?;
    let out = out.map_err(|e| ClusterError::io("read helm's output", e))?;
    let err = err.map_err(|e| ClusterError::io("read helm's errors", e))?;
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        // Killed (e.g. the executor's shutdown reached helm too): says nothing of the chart.
        return Err(ClusterError::io(
            "render with helm template",
            std::io::Error::other(format!("helm was killed by signal {signal}")),
        ));
    }
    let Bounded::Whole(out) = out else {
        return Ok(Err(format!(
            "Error: helm template printed more than {} MiB; the chart renders too much",
            MAX_OUTPUT_BYTES >> 20
        )));
    };
    if !status.success() {
        let (Bounded::Whole(err) | Bounded::Cut(err)) = err;
        return Ok(Err(String::from_utf8_lossy(&err).into_owned()));
    }
    Ok(String::from_utf8(out)
        .map_err(|_| "Error: helm template printed output that is not UTF-8".to_owned()))
}

/// Output read up to a limit: all of it, or the first `limit` bytes of more.
enum Bounded {
    Whole(Vec<u8>),
    Cut(Vec<u8>),
}

/// Reads `reader` to its end, keeping at most `limit` bytes; reading on past the limit (and
/// dropping it) lets the writer finish instead of blocking on a full pipe.
async fn read_bounded(
    mut reader: impl AsyncRead + Unpin,
    limit: usize,
) -> std::io::Result<Bounded> {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        cut |= n > room;
    }
    Ok(if cut {
        Bounded::Cut(kept)
    } else {
        Bounded::Whole(kept)
    })
}

/// helm's error output as a reason a user can act on: the `Error:` line(s), scratch paths
/// replaced by the names the user knows (`names`: path, name), bounded in length.
pub(crate) fn failure_reason(stderr: &str, names: &[(PathBuf, String)]) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        // Advice for the helm CLI user, not for Optikon's.
        .filter(|l| !l.is_empty() && !l.starts_with("Use --debug flag"))
        .collect();
    // helm prints warnings first and its error last, prefixed `Error: `.
    let start = lines
        .iter()
        .position(|l| l.starts_with("Error:"))
        .unwrap_or(0);
    let text = lines[start..].join("; ");
    let mut text = text
        .strip_prefix("Error:")
        .unwrap_or(&text)
        .trim()
        .to_owned();
    // Longest paths first, so a file inside the chart directory keeps its own name.
    let mut names: Vec<&(PathBuf, String)> = names.iter().collect();
    names.sort_by_key(|(path, _)| std::cmp::Reverse(path.as_os_str().len()));
    for (path, name) in names {
        text = text.replace(&*path.to_string_lossy(), name);
    }
    let text = if text.is_empty() {
        "helm template failed without saying why".to_owned()
    } else {
        text
    };
    if text.chars().count() > MAX_REASON_CHARS {
        let cut: String = text.chars().take(MAX_REASON_CHARS).collect();
        format!("{cut}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_taken_out_of_the_manifest() {
        let mut manifest = "---\n# Source: web/templates/a.yaml\nkind: ConfigMap\n\
            ---\n# Source: web/templates/optikon.dev-rendered-notes.yaml\n\
            apiVersion: optikon.dev/v1\nkind: RenderedNotes\n\
            notes: \"Hello \\u003cno value\\u003e\\nport: 80\\n\"\n\
            ---\n# Source: web/templates/b.yaml\nkind: Secret\n"
            .to_owned();
        assert_eq!(take_notes(&mut manifest).unwrap(), "Hello \nport: 80\n");
        assert_eq!(
            manifest,
            "---\n# Source: web/templates/a.yaml\nkind: ConfigMap\n\
             ---\n# Source: web/templates/b.yaml\nkind: Secret\n"
        );
        let mut last = "---\n# Source: web/templates/optikon.dev-rendered-notes.yaml\n\
            notes: \"\"\n"
            .to_owned();
        assert_eq!(take_notes(&mut last).unwrap(), "");
        assert_eq!(last, "");
        assert!(take_notes(&mut "---\n# Source: web/templates/a.yaml\n".to_owned()).is_err());
    }

    #[test]
    fn notes_that_define_templates_are_not_wrapped() {
        assert!(defines_templates("{{- define \"x\" -}}hi{{ end }}"));
        assert!(defines_templates("{{ block \"x\" . }}hi{{ end }}"));
        assert!(!defines_templates(
            "Visit {{ .Values.url }} ({{ template \"web.name\" . }})"
        ));
    }

    #[test]
    fn template_arguments_carry_cluster_capabilities() {
        let api_versions = vec![
            "v1".to_owned(),
            "apps/v1".to_owned(),
            "apps/v1/Deployment".to_owned(),
        ];
        let values = Map::new();
        let helm_values = HelmValues::default();
        let request = RenderRequest {
            release: "web",
            namespace: "shop",
            kube_version: "v1.34.4",
            api_versions: &api_versions,
            is_upgrade: true,
            values: &values,
            helm_values: &helm_values,
            kubeconfig: Some(Path::new("/k/config")),
        };
        let values_args = ["--values".into(), "/x/values.json".into()];
        let args: Vec<String> = template_args(&request, Path::new("/x/chart"), &values_args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("template web /x/chart --namespace shop --kube-version v1.34.4 --include-crds --dry-run=server --kubeconfig /k/config --values /x/values.json --is-upgrade"), "{joined}");
        assert!(
            joined.ends_with(
                "--api-versions v1 --api-versions apps/v1 --api-versions apps/v1/Deployment"
            ),
            "{joined}"
        );

        let install = RenderRequest {
            is_upgrade: false,
            kubeconfig: None,
            ..request
        };
        let args = template_args(&install, Path::new("/c"), &[]);
        assert!(
            !args
                .iter()
                .any(|a| a == "--is-upgrade" || a == "--kubeconfig")
        );
    }

    #[test]
    fn values_reach_helm_as_given_in_helms_order() {
        let dir = tempfile::tempdir().unwrap();
        let values: Map<String, Value> = serde_json::from_str(r#"{"a": 1}"#).unwrap();
        let helm_values = HelmValues {
            files: vec![optikon_core::values::ValuesFile {
                name: "prod.yaml".into(),
                text: "flag: no\nmode: 0644\n".into(),
            }],
            set: vec!["b=2".into()],
            set_string: vec!["c=3".into()],
            set_json: vec![r#"d={"e":1}"#.into()],
            set_literal: vec!["f=a,b".into()],
            set_file: vec![optikon_core::values::SetFile {
                key: "conf".into(),
                name: "app.conf".into(),
                text: "x = 1\n".into(),
            }],
        };
        let (args, written) = values_args(dir.path(), &values, &helm_values).unwrap();
        let d = dir.path().display();
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args.join(" "),
            format!(
                "--values {d}/values.json --values {d}/values-0.yaml --set-json d={{\"e\":1}} \
                 --set b=2 --set-string c=3 --set-literal f=a,b --set-file conf={d}/set-file-0"
            )
        );
        // Written byte for byte: helm, not Optikon, reads the YAML.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("values-0.yaml")).unwrap(),
            "flag: no\nmode: 0644\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("set-file-0")).unwrap(),
            "x = 1\n"
        );
        let names: Vec<&str> = written.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["the request's values", "prod.yaml", "app.conf"]);

        let (args, written) = values_args(dir.path(), &Map::new(), &HelmValues::default()).unwrap();
        assert!(args.is_empty() && written.is_empty());
    }

    #[test]
    fn metadata_strings_take_helms_reading_of_numbers() {
        let mut metadata = serde_json::json!({
            "name": "c", "version": "1.0", "appVersion": "1.10", "description": "0644",
            "home": "1.23456789012"
        });
        let read = serde_json::json!({
            "name": "c", "version": 1, "appVersion": 1.1, "description": 420,
            "home": 1.23456789012
        });
        type_as_helm(&mut metadata, read.as_object().unwrap());
        assert_eq!(
            metadata,
            serde_json::json!({
                "name": "c", "version": "1", "appVersion": "1.1", "description": "420",
                "home": "1.2345679"
            })
        );
    }

    #[test]
    fn the_probe_prints_config_and_chart_values() {
        let output = "---\n# Source: optikon-values-probe/templates/values.yaml\n{\"config\":{\"flag\":false},\"defaults\":{\"mode\":420},\"chart\":{\"appVersion\":1.1}}\n";
        let probe = parse_probe(output).unwrap();
        assert_eq!(
            Value::Object(probe.config),
            serde_json::json!({"flag": false})
        );
        assert_eq!(
            Value::Object(probe.chart_values),
            serde_json::json!({"mode": 420})
        );
        assert_eq!(
            Value::Object(probe.chart_yaml),
            serde_json::json!({"appVersion": 1.1})
        );
        assert!(parse_probe("").is_err());
    }

    #[test]
    fn chart_files_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_chart(
            dir.path(),
            &[
                ("Chart.yaml".into(), b"name: x".to_vec()),
                ("templates/a/b.yaml".into(), b"k: v".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("templates/a/b.yaml")).unwrap(),
            b"k: v"
        );
        for bad in ["../evil", "/etc/passwd", "templates/../../x", ""] {
            assert!(
                write_chart(dir.path(), &[(bad.into(), vec![])]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn failure_reason_is_helms_error_without_scratch_paths() {
        let stderr = "walk.go:75: found symbolic link in path\nError: YAML parse error on web/templates/bad.yaml: error converting YAML to JSON: yaml: line 3: mapping values are not allowed in this context\nUse --debug flag to render out invalid YAML\n";
        let names = |chart: &str| vec![(PathBuf::from(chart), "<chart>".to_owned())];
        let reason = failure_reason(stderr, &names("/tmp/optikon-render-1/chart"));
        assert_eq!(
            reason,
            "YAML parse error on web/templates/bad.yaml: error converting YAML to JSON: yaml: line 3: mapping values are not allowed in this context"
        );
        let reason = failure_reason(
            "Error: Chart.yaml file is missing in /tmp/s/chart\n",
            &names("/tmp/s/chart"),
        );
        assert_eq!(reason, "Chart.yaml file is missing in <chart>");
        let mut both = names("/tmp/s/chart");
        both.push((
            PathBuf::from("/tmp/s/values/values-0.yaml"),
            "prod.yaml".into(),
        ));
        let reason = failure_reason(
            "Error: failed to parse /tmp/s/values/values-0.yaml: error converting YAML to JSON\n",
            &both,
        );
        assert_eq!(
            reason,
            "failed to parse prod.yaml: error converting YAML to JSON"
        );
        assert_eq!(
            failure_reason("", &names("/c")),
            "helm template failed without saying why"
        );
        assert!(failure_reason(&"Error: x".repeat(2000), &names("/c")).ends_with('…'));
    }

    #[tokio::test]
    async fn output_is_read_to_a_bound() {
        let text = b"0123456789".as_slice();
        let Bounded::Whole(all) = read_bounded(text, 10).await.unwrap() else {
            panic!("ten bytes fit a bound of ten");
        };
        assert_eq!(all, b"0123456789");
        let Bounded::Cut(first) = read_bounded(text, 4).await.unwrap() else {
            panic!("ten bytes do not fit a bound of four");
        };
        assert_eq!(first, b"0123");
    }

    /// helm sees only [`PASSED_ENV`] of the executor's environment and its own scratch
    /// homes. A shell script in helm's place prints what it was given: this checks our
    /// process set-up, not helm.
    #[tokio::test]
    async fn helm_runs_with_only_the_passed_environment() {
        // The shell sets PWD, SHLVL and _ itself.
        let by_shell = ["PWD", "SHLVL", "_"];
        let outside: Vec<String> = std::env::vars()
            .map(|(name, _)| name)
            .filter(|name| {
                !PASSED_ENV.contains(&name.as_str())
                    && !by_shell.contains(&name.as_str())
                    && name != "HOME"
            })
            .collect();
        assert!(
            !outside.is_empty(),
            "the test needs a variable helm must not see, and the environment has none"
        );
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("print-env");
        std::fs::write(&script, "#!/bin/sh\nexec env\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let home = dir.path().join("home");
        let printed = run_helm(&script, &home, vec![]).await.unwrap().unwrap();
        let seen: std::collections::BTreeMap<&str, &str> = printed
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        for name in seen.keys() {
            assert!(
                PASSED_ENV.contains(name)
                    || by_shell.contains(name)
                    || *name == "HOME"
                    || name.starts_with("HELM_"),
                "helm was given {name}"
            );
        }
        for name in &outside {
            assert!(!seen.contains_key(name.as_str()), "helm was given {name}");
        }
        assert_eq!(seen.get("HOME"), Some(&&*home.to_string_lossy()));
        assert_eq!(
            seen.get("HELM_CONFIG_HOME"),
            Some(&&*home.join("config").to_string_lossy())
        );
        if let Ok(path) = std::env::var("PATH") {
            assert_eq!(seen.get("PATH"), Some(&path.as_str()));
        }
    }
}
