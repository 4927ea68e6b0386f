//! `/metrics`: a Prometheus registry rendered as OpenMetrics text.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

/// The content type of the rendered text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; were it to, no half-written text is served.
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

/// The `/metrics` response for rendered text.
pub fn response(text: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn encodes_registered_metrics_with_the_openmetrics_content_type() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("tributary_example", "An example", counter.clone());
        counter.inc();
        let text = encode(&registry);
        assert!(text.contains("tributary_example_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let response = response(text);
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(CONTENT_TYPE.as_bytes())
        );
    }
}
