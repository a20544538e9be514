//! Optikon's domain model: everything that can be decided without a network or a cluster.
//!
//! Transport (NATS) lives in `optikon-runtime` and the services; cluster access (kube) lives
//! in the executor and the prober. Keeping this crate free of I/O keeps it fast to test.

pub mod chart;
pub mod cluster_values;
pub mod manifest;
pub mod message;
pub mod names;
pub mod preview;
pub mod proximity;
pub mod release_record;
pub mod rollout;
pub mod schema;
pub mod selector;
pub mod subject;
pub mod values;
