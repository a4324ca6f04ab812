//! `cpis-relay deliver`: notifications handed to real webhook receivers (or an
//! outbox folder), acknowledged only once delivered.

mod agent;
mod log_check;
mod misconfigured;
