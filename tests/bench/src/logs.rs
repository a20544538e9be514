//! Reads the executors' JSON log lines (`OPTIKON_LOG_FORMAT=json`, which scripts/bench sets)
//! for the timing points of one release.

use std::path::Path;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One log event of one release.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: OffsetDateTime,
    pub message: String,
    pub fields: serde_json::Value,
}

impl Event {
    pub fn number(&self, field: &str) -> Option<f64> {
        self.fields.get(field)?.as_f64()
    }
}

/// Events of `release` (named in the event's fields or in its current span), in order.
pub fn events(text: &str, release: &str) -> Vec<Event> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            let named = |v: Option<&serde_json::Value>| {
                v.and_then(|v| v.get("release"))
                    .and_then(|r| r.as_str())
                    .is_some_and(|r| r == release)
            };
            named(line.get("fields")) || named(line.get("span"))
        })
        .filter_map(|line| event(&line))
        .collect()
}

/// Events of each of `releases` in any of the given log files (read once), in time order.
pub fn events_of(
    paths: &[impl AsRef<Path>],
    releases: &std::collections::BTreeSet<&str>,
) -> std::collections::BTreeMap<String, Vec<Event>> {
    let mut by_release: std::collections::BTreeMap<String, Vec<Event>> = Default::default();
    for text in paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()) {
        for line in text.lines() {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let release = ["/fields/release", "/span/release"]
                .iter()
                .find_map(|p| line.pointer(p)?.as_str());
            let Some(release) = release.filter(|r| releases.contains(r)) else {
                continue;
            };
            if let Some(event) = event(&line) {
                by_release
                    .entry(release.to_owned())
                    .or_default()
                    .push(event);
            }
        }
    }
    for events in by_release.values_mut() {
        events.sort_by_key(|e| e.at);
    }
    by_release
}

fn event(line: &serde_json::Value) -> Option<Event> {
    let at = OffsetDateTime::parse(line.get("timestamp")?.as_str()?, &Rfc3339).ok()?;
    let fields = line.get("fields")?.clone();
    let message = fields.get("message")?.as_str()?.to_owned();
    Some(Event {
        at,
        message,
        fields,
    })
}

/// Events of `release` in any of the given log files, in time order.
pub fn events_in(paths: &[impl AsRef<Path>], release: &str) -> Vec<Event> {
    let mut all: Vec<Event> = paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| events(&text, release))
        .collect();
    all.sort_by_key(|e| e.at);
    all
}

/// The releases named by the span of each `message` event whose span `action` matches.
pub fn releases_with(text: &str, message: &str, action: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line.pointer("/fields/message").and_then(|m| m.as_str()) == Some(message))
        .filter(|line| line.pointer("/span/action").and_then(|a| a.as_str()) == Some(action))
        .filter_map(|line| Some(line.pointer("/span/release")?.as_str()?.to_owned()))
        .collect()
}

/// The first and last event with this message.
pub fn first<'a>(events: &'a [Event], message: &str) -> Option<&'a Event> {
    events.iter().find(|e| e.message == message)
}

pub fn last<'a>(events: &'a [Event], message: &str) -> Option<&'a Event> {
    events.iter().rev().find(|e| e.message == message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"timestamp":"2026-11-25T22:48:54.100000Z","level":"INFO","fields":{"message":"command received","attempt":1},"target":"per_cluster_executor","span":{"action":"install","generation":1,"namespace":"default","release":"web","name":"command"},"spans":[]}
not json at all
{"timestamp":"2026-11-25T22:48:54.250000Z","level":"INFO","fields":{"message":"chart fetched","fetch_ms":2.5},"target":"per_cluster_executor","span":{"release":"other","name":"command"}}
{"timestamp":"2026-11-25T22:48:55.000000Z","level":"INFO","fields":{"message":"generation executed","release":"web","elapsed_ms":700},"target":"per_cluster_executor::cluster"}
{"timestamp":"2026-11-25T22:48:54.300000Z","level":"DEBUG","fields":{"message":"applied","object":"Deployment default/web"},"span":{"release":"web","name":"command"}}
"#;

    #[test]
    fn picks_the_release_events() {
        let events = events(LOG, "web");
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            ["command received", "generation executed", "applied"]
        );
        assert_eq!(events[1].number("elapsed_ms"), Some(700.0));
        assert_eq!(first(&events, "applied").unwrap().at.millisecond(), 300);
        assert!(last(&events, "chart fetched").is_none());
        assert_eq!(releases_with(LOG, "command received", "install"), ["web"]);
        let dir = std::env::temp_dir().join(format!("optikon-bench-logs-{}", std::process::id()));
        std::fs::write(&dir, LOG).unwrap();
        let by_release = events_of(&[&dir], &["web", "other"].into());
        let _ = std::fs::remove_file(&dir);
        assert_eq!(by_release["web"].len(), 3);
        assert_eq!(by_release["other"][0].number("fetch_ms"), Some(2.5));
        assert_eq!(by_release["web"][1].message, "applied", "sorted by time");
        assert!(releases_with(LOG, "command received", "uninstall").is_empty());
    }
}
