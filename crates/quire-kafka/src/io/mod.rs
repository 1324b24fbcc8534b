//! Talking to the broker, the registry and the world outside a stage's loop: Avro in
//! the Confluent wire format, whole-topic reads, the topics file with its idempotent
//! apply, the `/metrics` and `/health/*` endpoints every service serves, and the local
//! copy of a stage's ledger on disk.

pub mod codec;
pub mod http;
pub mod ledger_store;
pub mod reader;
pub mod topics;
