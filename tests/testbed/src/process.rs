//! Child processes of the test bed: logged to files, stopped on drop and at process exit.
//!
//! A test binary keeps its test bed in a `static`, and statics are never dropped, so every
//! child is also registered with an `atexit` hook that stops whatever is still running when
//! the test binary exits. Each child leads its own process group, so stopping it also stops
//! anything it started.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::Error;

/// Process groups still running, for the exit hook.
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static EXIT_HOOK: Once = Once::new();

/// A running child process whose stdout and stderr go to `log`.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `command` in a process group of its own, output appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, Error> {
        install_exit_hook();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("open log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("clone log handle", e))?;
        use std::os::unix::process::CommandExt;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .spawn()
            .map_err(|e| Error::io(format!("start {name} ({program})"), e))?;
        LIVE_GROUPS
            .lock()
            .expect("process registry")
            .insert(child.id() as i32);
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: log_tail(&self.log),
            }),
            Err(e) => Err(Error::io(format!("wait for {}", self.name), e)),
        }
    }

    /// SIGTERM to the group, SIGKILL after `grace`, then reap.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(pgid, libc::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever the leader did, nothing of its group may outlive it.
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
        LIVE_GROUPS.lock().expect("process registry").remove(&pgid);
    }

    /// SIGKILL at once: a crash, for fault tests.
    pub fn kill(&mut self) {
        self.stop(Duration::ZERO);
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[allow(unsafe_code)]
fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is shared.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

#[allow(unsafe_code)]
fn install_exit_hook() {
    extern "C" fn stop_all() {
        let groups: Vec<i32> = match LIVE_GROUPS.lock() {
            Ok(g) => g.iter().copied().collect(),
            Err(_) => return,
        };
        for pgid in &groups {
            signal_group(*pgid, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(500));
        for pgid in &groups {
            signal_group(*pgid, libc::SIGKILL);
        }
    }
    EXIT_HOOK.call_once(|| {
        // SAFETY: registers a plain function with the C runtime; it only signals processes.
        unsafe {
            libc::atexit(stop_all);
        }
    });
}
