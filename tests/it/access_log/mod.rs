//! The tamper-evident access log: positions and checkpoints on each store,
//! proofs fetched over mutual TLS and checked by an independent verifier,
//! witnesses' cosignatures, and `audit verify` finding what was tampered with.

mod embedded;
mod postgres;
mod proofs;
mod witness;
mod witness_verify;
