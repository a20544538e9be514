//! The harness every end-to-end test uses: one shared test bed per test binary.
//!
//! Starting Kubernetes control planes takes a while, so a test binary starts the test bed
//! once, on first use, and every test shares it; tests keep out of each other's way by
//! using their own release names and namespaces. The test bed stops when the binary exits.

use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use optikon_testbed::{Testbed, TestbedConfig};

static TESTBED: OnceLock<Mutex<Testbed>> = OnceLock::new();

/// The shared test bed (three demo sites, real clusters, services running). Tests that cut
/// links or restart servers hold the guard for their whole run, which keeps others out.
pub fn testbed() -> MutexGuard<'static, Testbed> {
    let cell = TESTBED.get_or_init(|| {
        let config = TestbedConfig {
            clusters: true,
            services: true,
            ..TestbedConfig::default()
        };
        match Testbed::start(config) {
            Ok(testbed) => Mutex::new(testbed),
            Err(e) => panic!("the test bed did not start; integration tests need it: {e}"),
        }
    });
    // A test that panicked while holding the lock leaves the test bed usable for the rest.
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Polls `check` until it returns `Some`, or fails naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_error.map(|e| format!(" (last error: {e:#})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
