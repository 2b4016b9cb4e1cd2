//! API request bodies: arbitrary bytes as the JSON body of every write route, through
//! `api::bodies::check_body` (the handlers' own reading and checks, before any look-up).
//!
//! Checks, beyond "no panic": a body is never answered with a 5xx; every refusal is a 4xx
//! whose answer is `application/json` holding exactly a string `error` (the refusal's code)
//! and a non-empty string `detail`.

use std::sync::OnceLock;

use avwarden::api::bodies::{check_body, BodyRoute};
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::Value;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    for route in BodyRoute::ALL {
        let Err(e) = check_body(route, data) else {
            continue;
        };
        let (status, code) = (e.status, e.code);
        assert!(
            status.is_client_error(),
            "{route:?} answered {status} ({code})"
        );
        let answer = e.into_response();
        assert_eq!(answer.status(), status);
        let json_type = answer
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/json");
        assert!(json_type, "{route:?} {code}: {:?}", answer.headers());
        let bytes = runtime()
            .block_on(axum::body::to_bytes(answer.into_body(), usize::MAX))
            .expect("an error body is in memory");
        let body: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{route:?} {code}: body is not JSON: {e}"));
        let Value::Object(fields) = &body else {
            panic!("{route:?} {code}: body {body} is not an object");
        };
        assert_eq!(fields.get("error"), Some(&Value::from(code)), "{body}");
        let detail = fields.get("detail").and_then(Value::as_str);
        assert!(
            detail.is_some_and(|d| !d.is_empty()),
            "{route:?} {code}: {body}"
        );
        assert!(
            fields.keys().all(|k| k == "error" || k == "detail"),
            "{route:?} {code}: {body}"
        );
    }
}
