//! One real Kubernetes control plane per edge site, run by `optikon-kube cluster`
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok; see tests/kube).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Error;
use crate::process::ChildProcess;
use crate::tools::Tools;

#[derive(Debug)]
pub struct KubeCluster {
    pub name: String,
    pub port: u16,
    pub kubeconfig: PathBuf,
    process: ChildProcess,
}

impl KubeCluster {
    /// Starts a cluster in `dir` and waits until it reports ready.
    pub fn start(tools: &Tools, name: &str, dir: &Path, port: u16) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let mut command = Command::new(tools.get("optikon-kube")?);
        command
            .arg("cluster")
            .arg("--name")
            .arg(name)
            .arg("--dir")
            .arg(dir)
            .arg("--port")
            .arg(port.to_string())
            .arg("--kwok")
            .arg(tools.get("kwok")?);
        let log = dir.join("cluster.log");
        let process = ChildProcess::spawn(&format!("cluster {name}"), command, &log)?;
        let mut cluster = KubeCluster {
            name: name.to_owned(),
            port,
            kubeconfig: dir.join("kubeconfig"),
            process,
        };
        cluster.wait_ready(&log, Duration::from_secs(240))?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, log: &Path, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("ready ")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "cluster {} not ready after {timeout:?}; see {}",
                    self.name,
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}
