//! cpis-relay: a child protection information-sharing relay.
//!
//! Local authorities upload the children they hold on child protection
//! plans, looked-after children and unborn child protection plans; NHS
//! unscheduled care looks a person up by NHS number over mutual TLS and sees
//! basic details only; every search of a flagged person notifies the owning
//! local authority, at least once, with acknowledgements.
//!
//! # Layout
//! - [`nhs`], [`model`], [`clock`]: domain values and rules with no I/O.
//! - [`index`]: the in-memory plan index rebuilt from the store on start;
//!   [`stored`]: the compact stored form of a plan it keeps; [`plan_history`]: what changed in a plan, and when.
//! - [`accesses`]: accesses in memory: each person's recent accesses, the
//!   previous-accesses rule, retried-request detection and the searches in flight.
//! - [`store`]: the system of record behind one trait.
//! - [`relay`]: the domain operations, testable without tonic.
//! - [`edge`]: what every door checks first (identity, draining, the global search permit);
//!   [`rpc`]: the gRPC edge layer (access log, metrics, deadlines).
//! - [`wire`]: the `cpis.v1` messages to and from the domain's types, shared by the doors and the tools.
//! - [`service`]: thin gRPC adapters; [`error`] maps the one error type to `Status`.
//! - [`fhir`]: the FHIR R4 door (NHS CP-IS API shapes), another adapter over the same domain.
//! - [`web`]: the browser view (clinician's card, LA inbox, access log, ops), a third adapter.
//! - [`auth`], [`tls`], [`certs`]: identity from certificates and bearer tokens, rustls configs
//!   and the HTTPS server the FHIR door and the browser view share, dev PKI; [`crypto`]: the one
//!   crypto provider.
//! - [`telemetry`]: logs and metrics; [`traces`]: OpenTelemetry traces (off unless configured), `traceparent` in and out.
//! - [`server`]: wires it together over a bound listener and a shutdown future.
//! - [`client`], [`cli`]: the command-line clients and tools.
//! - [`deliver`]: a local authority's delivery agent (webhook, outbox), a client of the relay.
//! - [`transparency`]: the tamper-evident access log (RFC 6962 tree, signed checkpoints, proofs);
//!   [`access_log`]: its keeper (tree, checkpoints, retention notes, witnessing) and `audit verify`;
//!   [`witness`]: `cpis-relay witness`, a C2SP tlog-witness that cosigns checkpoints.

#![forbid(unsafe_code)]
// An item is `pub` only where it is reachable from the crate root, that is
// where other crates (the binary, tests/it, benches/) may use it; everything
// else says `pub(crate)` or narrower, so a reader can tell the API from the
// insides. Here rather than in Cargo.toml's [lints] table because that table
// also covers the benchmark binaries, whose helper modules are not narrowed yet.
#![warn(unreachable_pub)]
// No unwrap or expect outside tests (clippy.toml allows them in tests): a
// request path answers with an error, and the few invariants that cannot
// fail say why where they are allowed.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod access_log;
pub mod accesses;
pub mod auth;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod deliver;
pub mod edge;
pub mod error;
pub mod fhir;
pub mod index;
pub mod model;
pub mod nhs;
pub mod plan_history;
pub mod proto;
pub mod records_file;
pub mod relay;
pub mod rpc;
pub mod server;
pub mod service;
pub mod store;
pub mod stored;
pub mod synth;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod traces;
pub mod transparency;
pub mod web;
pub mod wire;
pub mod witness;
