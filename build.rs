//! Generates the `cpis.v1` gRPC code from `proto/` with a vendored `protoc`
//! (a `PROTOC` in the environment still wins), plus the descriptor set that
//! server reflection serves.
//!
//! The one `unsafe` of the crate: `env::set_var` to hand prost its `protoc`
//! (sound here: a build script runs on one thread).
#![allow(unsafe_code)]

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if env::var_os("PROTOC").is_none() {
        // Build scripts are single-threaded, so setting the variable is sound.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        #[allow(
            clippy::disallowed_methods,
            reason = "a build script runs on one thread: nothing reads the environment meanwhile"
        )]
        unsafe {
            env::set_var("PROTOC", protoc)
        };
    }
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos: [PathBuf; 5] = [
        "proto/cpis/v1/common.proto".into(),
        "proto/cpis/v1/lookup.proto".into(),
        "proto/cpis/v1/plans.proto".into(),
        "proto/cpis/v1/notifications.proto".into(),
        "proto/cpis/v1/audit.proto".into(),
    ];
    // Messages holding personal data get a redacted `Debug` (src/proto/redacted.rs).
    let redacted = [
        ".cpis.v1.AccessLogRequest",
        ".cpis.v1.Accessor",
        ".cpis.v1.Address",
        ".cpis.v1.PlanRecord",
        ".cpis.v1.SearchRequest",
        ".cpis.v1.Person",
        ".cpis.v1.AccessNotification",
        ".cpis.v1.Rejection",
        ".cpis.v1.DeleteRequest",
        ".cpis.v1.InclusionProofResponse",
        ".cpis.v1.SubjectAccessRequest",
        ".cpis.v1.SubjectAccessReport",
        ".cpis.v1.LoggedAccess",
    ];
    tonic_prost_build::configure()
        .skip_debug(redacted)
        .file_descriptor_set_path(out_dir.join("cpis_v1_descriptor.bin"))
        .compile_protos(&protos, &[PathBuf::from("proto"), include])?;
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
