//! The real binary under faults of the machine around it: SIGKILL, power
//! loss, a full or failing disk, a network that drops packets, a database
//! that restarts, a node whose clock is off. Several need root (network
//! namespaces, mounts, FUSE) and skip without it unless `CI=true`.

mod clock_skew;
mod crash;
mod network;
mod postgres_crash;
mod power_loss;
mod store_broken;
