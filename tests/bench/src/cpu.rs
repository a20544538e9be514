//! CPU time from `/proc`: per process (own and reaped children) and for the whole machine,
//! so a benchmark can say which part was busy while it ran.

use std::collections::BTreeMap;

/// Linux reports process times in USER_HZ ticks, which is 100 on every mainstream
/// architecture (reading it with sysconf would need `unsafe`, which the workspace denies).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds of one process: its own, and that of its children it has waited for
/// (for the executor: the `helm template` runs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessTimes {
    pub own: f64,
    pub children: f64,
}

pub fn process_times(pid: u32) -> Option<ProcessTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Fields 14–17 of `/proc/<pid>/stat` (utime, stime, cutime, cstime), counted after the
/// command name, which may itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<ProcessTimes> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field k is fields[k - 3].
    let tick = |k: usize| fields.get(k - 3)?.parse::<f64>().ok();
    Some(ProcessTimes {
        own: (tick(14)? + tick(15)?) / TICKS_PER_SECOND,
        children: (tick(16)? + tick(17)?) / TICKS_PER_SECOND,
    })
}

/// (busy, total) CPU seconds of the whole machine since boot, all cores together.
pub fn machine_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine(&stat)
}

fn parse_machine(stat: &str) -> Option<(f64, f64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    Some(((total - idle) / TICKS_PER_SECOND, total / TICKS_PER_SECOND))
}

/// Every process's pid and command line (arguments split), as far as it can be read.
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!args.is_empty()).then_some((pid, args))
        })
        .collect()
}

/// What to count for one named part: processes, and whether their own time or their
/// children's.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub pids: Vec<u32>,
    pub children: bool,
}

/// A set of named parts, measured between two [`Snapshot`]s.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    at: std::time::Instant,
    parts: BTreeMap<String, f64>,
    machine: Option<(f64, f64)>,
}

/// CPU seconds per part between two snapshots, plus the machine's.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub wall: f64,
    /// In the order of the probe's parts.
    pub parts: Vec<(String, f64)>,
    pub machine_busy: f64,
    pub machine_total: f64,
}

impl Usage {
    /// How busy all cores together were, 0–100 %.
    pub fn machine_percent(&self) -> f64 {
        if self.machine_total > 0.0 {
            100.0 * self.machine_busy / self.machine_total
        } else {
            f64::NAN
        }
    }

    /// CPU seconds not accounted to any part (other test beds, builds, the benchmark).
    pub fn other(&self) -> f64 {
        (self.machine_busy - self.parts.iter().map(|(_, s)| s).sum::<f64>()).max(0.0)
    }
}

impl Probe {
    pub fn add(&mut self, name: &str, pids: Vec<u32>, children: bool) {
        self.parts.push(Part {
            name: name.to_owned(),
            pids,
            children,
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        let parts = self
            .parts
            .iter()
            .map(|p| {
                let seconds = p
                    .pids
                    .iter()
                    .filter_map(|pid| process_times(*pid))
                    .map(|t| if p.children { t.children } else { t.own })
                    .sum();
                (p.name.clone(), seconds)
            })
            .collect();
        Snapshot {
            at: std::time::Instant::now(),
            parts,
            machine: machine_times(),
        }
    }

    pub fn usage(&self, before: &Snapshot, after: &Snapshot) -> Usage {
        let (machine_busy, machine_total) = match (before.machine, after.machine) {
            (Some((b0, t0)), Some((b1, t1))) => (b1 - b0, t1 - t0),
            _ => (0.0, 0.0),
        };
        Usage {
            wall: (after.at - before.at).as_secs_f64(),
            parts: self
                .parts
                .iter()
                .map(|p| {
                    let delta = after.parts.get(&p.name).unwrap_or(&0.0)
                        - before.parts.get(&p.name).unwrap_or(&0.0);
                    (p.name.clone(), delta.max(0.0))
                })
                .collect(),
            machine_busy,
            machine_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_process_stat_with_odd_names() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194304 10 0 0 0 250 50 300 100 20 0 1 0";
        let t = parse_stat(stat).unwrap();
        assert_eq!(t.own, 3.0);
        assert_eq!(t.children, 4.0);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_machine_stat() {
        let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine(stat), Some((2.0, 10.0)));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(process_times(pid).is_some());
        assert!(processes().iter().any(|(p, _)| *p == pid));
    }
}
