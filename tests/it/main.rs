//! The relay's integration tests, in one binary: each test binary links the
//! whole library, so one binary is one link instead of forty. A test starts
//! what it needs itself: a real relay in-process on 127.0.0.1:0 over real
//! mutual TLS, or the real `cpis-relay` binary as a subprocess, a private
//! PostgreSQL cluster, a real browser, real webhook receivers. [`helpers`] is
//! the one harness they share.
//!
//! Run them with `cargo nextest run`, which runs each test in a process of its
//! own (some set process-wide state: a tracing subscriber, a crypto provider,
//! environment variables). One group: `cargo nextest run -E 'test(/^postgres::/)'`.
//!
//! | module | what it holds |
//! |---|---|
//! | `relay` | the domain's rules through the gRPC door: searches, uploads, roles, validation, limits |
//! | `fhir` | the FHIR R4 door (NHS CP-IS API) |
//! | `browser` | the browser view: its pages over HTTPS, and a real Chromium |
//! | `deliver` | `cpis-relay deliver` posting to webhook receivers |
//! | `access_log` | the tamper-evident access log: proofs, checkpoints, witnesses, `audit verify` |
//! | `stores` | the stores' one contract, durability, held notifications |
//! | `postgres` | several relay nodes on one PostgreSQL |
//! | `operating` | running a node: shutdown, metrics, logs, traces, connections, certificates, the terminal |
//! | `model` | property tests of the values, and fuzzing's regressions |
//! | `faults` | the real binary under crashes, power loss, a full disk, network faults, a skewed clock |
//!
//! `faults::network` and `faults::postgres_crash` run alone (.config/nextest.toml):
//! they measure recovery times that another test's load would stretch.

mod access_log;
mod browser;
mod deliver;
mod faults;
mod fhir;
mod helpers;
mod model;
mod operating;
mod postgres;
mod relay;
mod stores;
