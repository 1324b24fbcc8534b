//! Talking to the broker, the registry and the world outside a stage's loop: Avro in
//! the Confluent wire format, whole-topic reads, the topics file with its idempotent
//! apply, and the `/metrics` and `/health/*` endpoints every service serves.

pub mod codec;
pub mod http;
pub mod reader;
pub mod topics;
