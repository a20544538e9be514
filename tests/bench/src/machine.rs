//! What the benchmark ran on: cores, memory, CPU model, load, date.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_gib: f64,
    pub mem_available_gib: f64,
    pub cpu_model: String,
    pub load_average: String,
    pub date: String,
}

impl Machine {
    pub fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_gib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) as f64 / 1048576.0,
            mem_available_gib: meminfo_kib(&meminfo, "MemAvailable").unwrap_or(0) as f64
                / 1048576.0,
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            load_average: loadavg
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            date: now_rfc3339(),
        }
    }

    /// Memory available right now, in GiB.
    pub fn available_gib() -> f64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        meminfo_kib(&meminfo, "MemAvailable").unwrap_or(0) as f64 / 1048576.0
    }
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A `/proc/meminfo` field in KiB.
fn meminfo_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The first `model name` of `/proc/cpuinfo`.
fn cpu_model(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let meminfo = "MemTotal:       24590200 kB\nMemFree:  1 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), Some(24590200));
        assert_eq!(meminfo_kib(meminfo, "MemAvailable"), Some(22000000));
        assert_eq!(meminfo_kib(meminfo, "Swap"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
    }
}
