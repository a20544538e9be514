//! Renders a chart with the real Helm template engine: `helm template` against the target
//! cluster's version and API list, in a scratch directory that goes away afterwards.

use std::ffi::OsString;
use std::path::{Component, Path};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};

use super::ClusterError;

/// `helm template` of a small chart takes well under a second; this only stops a hung one.
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest failure text kept from helm's stderr.
const MAX_REASON_CHARS: usize = 4000;

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
    /// User-supplied values (the chart's own `values.yaml` is in the chart).
    pub values: &'a Map<String, Value>,
}

/// `helm template` arguments for a chart in `chart_dir` with values in `values_file`.
pub(crate) fn template_args(
    request: &RenderRequest<'_>,
    chart_dir: &Path,
    values_file: &Path,
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
        "--values".into(),
        values_file.into(),
    ];
    if request.is_upgrade {
        args.push("--is-upgrade".into());
    }
    for api_version in request.api_versions {
        args.push("--api-versions".into());
        args.push(api_version.into());
    }
    args
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
) -> Result<Result<String, String>, ClusterError> {
    let scratch = tempfile::Builder::new()
        .prefix("optikon-render-")
        .tempdir()
        .map_err(|e| ClusterError::io("create a scratch directory for helm", e))?;
    let chart_dir = scratch.path().join("chart");
    if let Err(reason) = write_chart(&chart_dir, files) {
        return Ok(Err(reason));
    }
    let values_file = scratch.path().join("values.json");
    let values = serde_json::to_vec(request.values).expect("a JSON map serializes");
    std::fs::write(&values_file, values)
        .map_err(|e| ClusterError::io("write the values file", e))?;

    let home = scratch.path().join("helm-home");
    let mut command = tokio::process::Command::new(helm);
    command
        .args(template_args(request, &chart_dir, &values_file))
        // Keep helm away from the host's repositories, plugins and caches.
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("HELM_PLUGINS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(RENDER_TIMEOUT, command.output()).await {
        Ok(output) => output.map_err(|source| ClusterError::Helm {
            path: helm.to_owned(),
            source,
        })?,
        Err(_) => {
            return Ok(Err(format!(
                "helm template did not finish within {}s",
                RENDER_TIMEOUT.as_secs()
            )));
        }
    };
    if output.status.success() {
        let text = String::from_utf8(output.stdout)
            .map_err(|_| "helm template printed output that is not UTF-8".to_owned());
        return Ok(text);
    }
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&output.status) {
        // Killed (e.g. the executor's shutdown reached helm too): says nothing of the chart.
        return Err(ClusterError::io(
            "render with helm template",
            std::io::Error::other(format!("helm was killed by signal {signal}")),
        ));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Ok(Err(failure_reason(&stderr, &chart_dir)))
}

/// helm's error output as a reason a user can act on: the `Error:` line(s), scratch paths
/// removed, bounded in length.
pub(crate) fn failure_reason(stderr: &str, chart_dir: &Path) -> String {
    let dir = chart_dir.to_string_lossy();
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
    let text = text.strip_prefix("Error:").unwrap_or(&text).trim();
    let text = text.replace(&*dir, "<chart>");
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
    fn template_arguments_carry_cluster_capabilities() {
        let api_versions = vec![
            "v1".to_owned(),
            "apps/v1".to_owned(),
            "apps/v1/Deployment".to_owned(),
        ];
        let values = Map::new();
        let request = RenderRequest {
            release: "web",
            namespace: "shop",
            kube_version: "v1.34.4",
            api_versions: &api_versions,
            is_upgrade: true,
            values: &values,
        };
        let args: Vec<String> =
            template_args(&request, Path::new("/x/chart"), Path::new("/x/values.json"))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect();
        let joined = args.join(" ");
        assert!(joined.starts_with("template web /x/chart --namespace shop --kube-version v1.34.4 --include-crds --values /x/values.json --is-upgrade"), "{joined}");
        assert!(
            joined.ends_with(
                "--api-versions v1 --api-versions apps/v1 --api-versions apps/v1/Deployment"
            ),
            "{joined}"
        );

        let install = RenderRequest {
            is_upgrade: false,
            ..request
        };
        let args = template_args(&install, Path::new("/c"), Path::new("/v"));
        assert!(!args.iter().any(|a| a == "--is-upgrade"));
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
        let reason = failure_reason(stderr, Path::new("/tmp/optikon-render-1/chart"));
        assert_eq!(
            reason,
            "YAML parse error on web/templates/bad.yaml: error converting YAML to JSON: yaml: line 3: mapping values are not allowed in this context"
        );
        let reason = failure_reason(
            "Error: Chart.yaml file is missing in /tmp/s/chart\n",
            Path::new("/tmp/s/chart"),
        );
        assert_eq!(reason, "Chart.yaml file is missing in <chart>");
        assert_eq!(
            failure_reason("", Path::new("/c")),
            "helm template failed without saying why"
        );
        assert!(failure_reason(&"Error: x".repeat(2000), Path::new("/c")).ends_with('…'));
    }
}
