pub mod cancel;
pub mod demo;
pub mod dlq;
pub mod publish;
pub mod redrive;
pub mod report;
pub mod stack;
pub mod topics;
