//! Running a node: load shedding, shutdown, metrics and configuration; logs
//! and traces; connection limits and certificate reloads; privacy of files
//! and logs; the CLI at a terminal.

mod certificates;
mod connections;
mod logs;
mod operations;
mod privacy;
mod terminal;
mod traces;
