//! The watchdogs: consumer-group lag in offsets and seconds (`lag`), blocks standing
//! too long in one state (`blocks`), instances silent past their TTL (`instances`).

pub mod blocks;
pub mod instances;
pub mod lag;
