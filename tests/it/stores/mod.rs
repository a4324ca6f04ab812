//! The system of record: one behavioural contract run on all three stores,
//! durability across restarts and retention, and notifications held while
//! the store fails.

mod conformance;
mod durability;
mod held;
