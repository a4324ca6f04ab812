//! The domain's rules through the gRPC door, over real mutual TLS: upload,
//! search, notification and acknowledgement; who may do what; validation;
//! atomic refreshes; plans that start later; limits per upload and per
//! organisation; oversight of reads.

mod authz;
mod end_to_end;
mod organisation_limits;
mod oversight;
mod plan_start;
mod refresh;
mod upload_limits;
mod validation;
