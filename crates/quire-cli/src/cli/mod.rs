pub mod demo;
pub mod publish;
pub mod report;
pub mod stack;
pub mod topics;
