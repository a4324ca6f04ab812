//! Several relay nodes on one PostgreSQL (a private cluster per test, see
//! `helpers::postgres`): what one node writes the others see, how sessions
//! are opened, the locks a search may wait on, one log key per deployment,
//! one round trip per flagged search, request keys kept as long as their access.

mod keys;
mod locks;
mod nodes;
mod requests;
mod round_trips;
mod sessions;
mod subject;
