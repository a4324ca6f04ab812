//! Traces from a clinician's search to the local authority's webhook: a real
//! relay in-process on 127.0.0.1:0 over real mutual TLS, a real `deliver`
//! agent in-process posting to a real webhook receiver, both exporting
//! through the real OTLP/gRPC exporter to a collector this test runs (the
//! OpenTelemetry collector's own TraceService, from `opentelemetry-proto`).
//! Relay and agent share this process's tracer provider, as they share its
//! subscriber; nextest runs each test in a process of its own, so the global
//! subscriber set here is this test's alone. Every wait is bounded and on an
//! event or a poll of what the collector received, never a sleep.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::helpers::agent::*;
use crate::helpers::webhook_receiver::{Receiver, secret};
use crate::helpers::*;
use cpis_relay::{
    proto::PlanType,
    telemetry::{LogFormat, init_logging_with_traces},
    traces::TraceConfig,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::net::TcpListener;

/// Spans as the collector received them.
#[derive(Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// Exports received so far: what a wait for spans awaits.
    exports: tokio::sync::watch::Sender<u64>,
}

impl Default for Collector {
    fn default() -> Self {
        Self { spans: Arc::default(), exports: tokio::sync::watch::Sender::new(0) }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        {
            let mut spans = self.spans.lock().unwrap();
            for resource in request.into_inner().resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
        }
        self.exports.send_modify(|exports| *exports += 1);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// An OTLP/gRPC collector on 127.0.0.1:0; its endpoint URL.
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        format!("http://{address}")
    }

    /// The spans of one trace, once every name in `wanted` is among them (at most 30 s).
    async fn trace_with(&self, trace_id: &[u8], wanted: &[&str]) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exports = self.exports.subscribe();
        loop {
            exports.mark_unchanged();
            let spans: Vec<Span> =
                self.spans.lock().unwrap().iter().filter(|span| span.trace_id == trace_id).cloned().collect();
            if wanted.iter().all(|name| spans.iter().any(|span| span.name == *name)) {
                return spans;
            }
            let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
            let next_export = tokio::time::timeout_at(deadline.into(), exports.changed()).await;
            assert!(next_export.is_ok(), "spans of the trace by the deadline: {names:?}, wanted {wanted:?}");
        }
    }

    fn all(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute_texts(span: &Span) -> Vec<String> {
    span.attributes
        .iter()
        .map(|attribute| {
            let value = match attribute.value.as_ref().and_then(|value| value.value.as_ref()) {
                Some(Value::StringValue(text)) => text.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            format!("{}={value}", attribute.key)
        })
        .collect()
}

fn bytes_of(hex_id: &str) -> Vec<u8> {
    (0..hex_id.len() / 2).map(|i| u8::from_str_radix(&hex_id[2 * i..2 * i + 2], 16).unwrap()).collect()
}

/// Asserts that a span named `child` of `spans` has the span named `parent` as its parent.
fn parent_of_in(spans: &[Span], child: &str, parent: &str) {
    let parent_id = &spans.iter().find(|span| span.name == parent).unwrap().span_id;
    assert!(
        spans.iter().any(|span| span.name == child && span.parent_span_id == *parent_id),
        "a {child} span under {parent}"
    );
}

/// An upload of one person for la-706 sent with `traceparent`.
async fn traced_upload(relay: &TestRelay, person: &str, traceparent: &str) {
    use cpis_relay::proto::{UploadHeader, UploadMessage, UploadMode, upload_message::Body};
    let header = UploadHeader {
        mode: UploadMode::Incremental as i32,
        file_id: "traced".into(),
        local_authority: Some(authority("706")),
        allow_large_removal: false,
    };
    let messages = [
        UploadMessage { body: Some(Body::Header(header)) },
        UploadMessage { body: Some(Body::Record(record(person, PlanType::ChildProtection))) },
    ];
    let mut request = tonic::Request::new(futures::stream::iter(messages));
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    let report = relay.plans("la-706").await.upload(request).await.unwrap().into_inner();
    assert_eq!(report.loaded, 1);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_search_is_one_trace_from_the_door_to_the_webhook_and_the_ack() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // Ratio 0: only the traced search (its traceparent says sampled) is recorded.
    let config = TraceConfig { endpoint, sample_ratio: 0.0 };
    let logging = init_logging_with_traces(LogFormat::Json, "warn", Some(&config), "cpis-relay-test").unwrap();

    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (secret, secret_file) = secret(dir.path());
    let person = nhs(41);
    let upload_trace = "1e0c1b2a3d4e4f508a9b0c1d2e3f4a5b";
    traced_upload(&relay, &person, &format!("00-{upload_trace}-a1b2c3d4e5f60718-01")).await;
    let mut receiver = Receiver::start(&relay, &secret, None).await;
    let agent = RunningAgent::start(
        &relay,
        webhook(settings(&relay, dir.path()), receiver.url("http", "127.0.0.1"), &secret_file),
    );

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(search_request(&person, "clinician-7", "req-7"));
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().unwrap());
    let answer = relay.lookup().await.search(request).await.unwrap().into_inner();
    assert!(answer.flagged);

    let arrival = receiver.next().await;
    let sent = arrival.traceparent.expect("the webhook POST carries traceparent");
    assert_eq!(sent.split('-').nth(1), Some(trace_id), "the receiver sees the search's trace id: {sent}");
    agent.acked_through(arrival.body.sequence).await;

    logging.traces().unwrap().flush();
    let wanted = [
        "grpc Lookup.Search",
        "search",
        "validate",
        "index lookup",
        "commit",
        "notify",
        "deliver notification",
        "webhook POST",
        "ack",
        "grpc Notifications.Ack",
    ];
    let spans = collector.trace_with(&bytes_of(trace_id), &wanted).await;
    // Two spans are named commit (the search's and the acknowledgement's): by name, the search's.
    let by_name: HashMap<&str, &Span> = spans
        .iter()
        .filter(|span| !(span.name == "commit" && span.attributes.iter().any(|a| a.key == "acked_through")))
        .map(|span| (span.name.as_str(), span))
        .collect();
    let parent_of = |child: &str, parent: &str| {
        assert_eq!(
            hex(&by_name[child].parent_span_id),
            hex(&by_name[parent].span_id),
            "{child} is a child of {parent}"
        );
    };
    assert_eq!(hex(&by_name["grpc Lookup.Search"].parent_span_id), caller_span, "the door continues the caller's span");
    parent_of("search", "grpc Lookup.Search");
    parent_of("validate", "search");
    parent_of("index lookup", "search");
    parent_of("commit", "search");
    parent_of("notify", "commit");
    // The agent continues from the commit that made the notification durable.
    parent_of("deliver notification", "commit");
    parent_of("webhook POST", "deliver notification");
    parent_of("ack", "deliver notification");
    parent_of("grpc Notifications.Ack", "ack");
    assert_eq!(sent.split('-').nth(2), Some(hex(&by_name["webhook POST"].span_id).as_str()));

    // The upload is a trace of its own: the door, the records' validation, the commit.
    let upload = collector.trace_with(&bytes_of(upload_trace), &["grpc Plans.Upload", "validate", "commit"]).await;
    let upload: HashMap<&str, &Span> = upload.iter().map(|span| (span.name.as_str(), span)).collect();
    for child in ["validate", "commit"] {
        assert_eq!(hex(&upload[child].parent_span_id), hex(&upload["grpc Plans.Upload"].span_id), "{child}");
    }
    // The acknowledgement's commit at the relay, under the agent's ack call.
    parent_of_in(&spans, "commit", "grpc Notifications.Ack");

    // At ratio 0 only what a sampled traceparent started is recorded: the agent's
    // subscription and first acknowledgement (no traceparent) are not.
    for span in collector.all() {
        assert!(
            [bytes_of(trace_id), bytes_of(upload_trace)].contains(&span.trace_id),
            "span {} of an unsampled trace was exported",
            span.name
        );
    }

    // Nothing personal in any span the collector received, of this trace or any other.
    let name = "Dr clinician-7".to_owned();
    for span in collector.all() {
        for text in attribute_texts(&span).iter().chain([&span.name]) {
            for personal in [person.as_str(), "Sam", "Testchild", "Test Street", name.as_str(), "clinician-7", "req-7"]
            {
                assert!(!text.contains(personal), "span {} holds {personal:?}: {text}", span.name);
            }
        }
    }
    agent.stop().await;
}

#[test]
fn a_bad_trace_setting_is_a_configuration_error_naming_it() {
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cpis-relay")).args(args).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, stderr) = run(&["serve", "--otlp-endpoint", "http://127.0.0.1:4317", "--trace-sample-ratio", "2"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("trace_sample_ratio"), "{stderr}");
    let (code, stderr) = run(&["serve", "--otlp-endpoint", "ftp://collector"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("otlp_endpoint"), "{stderr}");
    let outbox = tempfile::tempdir().unwrap();
    let outbox = outbox.path().to_str().unwrap();
    let (code, stderr) = run(&["deliver", "--outbox", outbox, "--otlp-endpoint", "collector:4317"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("otlp_endpoint"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fhir_door_continues_the_callers_trace_and_names_its_span_by_route_not_by_path() {
    use http_body_util::BodyExt;
    let collector = Collector::default();
    let config = TraceConfig { endpoint: collector.start().await, sample_ratio: 0.0 };
    let logging = init_logging_with_traces(LogFormat::Json, "warn", Some(&config), "cpis-relay-test").unwrap();
    let relay = TestRelay::start_fhir().await;
    let person = nhs(42);
    relay.load("706", vec![record(&person, PlanType::ChildProtection)]).await;
    let door = relay.fhir.as_ref().unwrap();

    let (trace_id, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let request = hyper::Request::get(door.search_url("CareTeam", &person))
        .header("authorization", format!("Bearer {}", door.token("clinician-8")))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = https_client(&relay.pki.client_pem("ed-rr8")).request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    logging.traces().unwrap().flush();
    let door_span = "fhir GET /cpis/FHIR/R4/CareTeam";
    let spans = collector.trace_with(&bytes_of(trace_id), &[door_span, "search", "commit", "notify"]).await;
    let door = spans.iter().find(|span| span.name == door_span).unwrap();
    assert_eq!(hex(&door.parent_span_id), caller_span);
    for span in collector.all() {
        for text in attribute_texts(&span).iter().chain([&span.name]) {
            for personal in [person.as_str(), "Sam", "Testchild", "clinician-8"] {
                assert!(!text.contains(personal), "span {} holds {personal:?}: {text}", span.name);
            }
        }
    }
}
