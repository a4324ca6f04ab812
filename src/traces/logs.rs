//! Log lines joined to traces: the JSON log format with `trace_id` and
//! `span_id` added to every line written while a traced span is entered on
//! the logging thread, so a log search and a trace view meet on the same ids.
//! Only installed when traces are on; the text format is left as it is.

use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Wraps the JSON event format (one object per line).
pub(crate) struct TraceIdsJson<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for TraceIdsJson<F>
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = super::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON format writes one object and a newline: the ids go in before its closing brace.
        match line.trim_end().strip_suffix('}') {
            Some(open) => writeln!(writer, "{open},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::{filter::Targets, fmt, prelude::*};

    use super::TraceIdsJson;
    use crate::telemetry::TestBuffer as Buffer;

    #[test]
    fn json_lines_carry_the_trace_and_span_ids_only_inside_a_traced_span() {
        // A provider that exports nothing: spans are sampled and have ids all the same.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(Targets::new().with_target(crate::traces::TARGET, tracing::Level::TRACE));
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let json = fmt::format().json().flatten_event(true);
        let logs = fmt::layer()
            .fmt_fields(fmt::format::JsonFields::new())
            .event_format(TraceIdsJson(json))
            .with_writer(move || writer.clone())
            .with_filter(Targets::new().with_default(tracing::Level::INFO));
        let subscriber = tracing_subscriber::registry().with(spans).with(logs);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::trace_span!(target: crate::traces::TARGET, "search");
            span.in_scope(|| tracing::info!("inside"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["trace_id"].as_str().map(str::len), Some(32), "{text}");
        assert_eq!(lines[1]["span_id"].as_str().map(str::len), Some(16), "{text}");
    }
}
