//! The OTLP/gRPC span exporter on a small Tokio runtime of its own.
//!
//! OpenTelemetry's batch processor exports from a plain thread of its own,
//! polling the exporter's future with a minimal executor that has no Tokio
//! reactor, while tonic's channel needs one (without it the processor's
//! thread panics with "there is no reactor running" and every span after it
//! is dropped). So the channel is built inside this runtime and each export
//! runs as a task on it; the batch thread only waits for the task's result.
//! One worker thread: exports are small and infrequent, and the relay's own
//! runtime never carries them.

use std::{sync::Arc, time::Duration};

use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};

/// How long one export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A runtime dropped without blocking wherever its last owner goes (a
/// blocking shutdown inside another runtime's worker would panic).
#[derive(Debug)]
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Debug)]
pub(super) struct OwnRuntimeExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    handle: tokio::runtime::Handle,
    _runtime: OwnedRuntime,
}

impl OwnRuntimeExporter {
    pub(super) fn new(endpoint: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cpis-trace-export")
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the trace exporter's runtime: {error}"))?;
        let handle = runtime.handle().clone();
        // tonic's lazy channel spawns its worker on the runtime it is built in.
        let _entered = runtime.enter();
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT);
        if endpoint.starts_with("https:") {
            builder = builder.with_tls_config(system_roots()?);
        }
        let inner = builder.build().map_err(|error| format!("otlp_endpoint {endpoint}: {error}"))?;
        Ok(Self { inner: Arc::new(inner), handle, _runtime: OwnedRuntime(Some(runtime)) })
    }
}

/// The system's trust roots for an https collector, as tonic takes them (PEM).
fn system_roots() -> Result<tonic::transport::ClientTlsConfig, String> {
    use base64::Engine;
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(format!("otlp_endpoint: no system trust roots to verify the collector with ({:?})", found.errors));
    }
    let mut config = tonic::transport::ClientTlsConfig::new();
    for certificate in found.certs {
        let body = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
        let lines: Vec<&str> = body.as_bytes().chunks(64).filter_map(|chunk| std::str::from_utf8(chunk).ok()).collect();
        let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
        config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    Ok(config)
}

impl SpanExporter for OwnRuntimeExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let task = self.handle.spawn(async move { inner.export(batch).await });
        async move { task.await.map_err(|error| OTelSdkError::InternalFailure(error.to_string()))? }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called once, before the first export, while this is the only owner.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
