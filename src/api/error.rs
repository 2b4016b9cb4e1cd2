//! API errors: always a status code and a JSON body.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// When to try again (a busy device's expected ready time): `until` in the body and a
    /// `Retry-After` header.
    pub retry_at: Option<(chrono::DateTime<chrono::Utc>, u64)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_at: None,
        }
    }

    /// Tell the caller to retry at `until`, `secs` from now.
    pub fn retry_at(mut self, until: chrono::DateTime<chrono::Utc>, secs: u64) -> Self {
        self.retry_at = Some((until, secs));
        self
    }

    pub fn unknown_device(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_device",
            format!("no device {id:?}"),
        )
    }

    pub fn from_json_rejection(r: JsonRejection) -> Self {
        let status = r.status();
        let code = match r {
            JsonRejection::MissingJsonContentType(_) => "expected_json",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::JsonDataError(_) => "invalid_body",
            _ => "bad_body",
        };
        Self::new(status, code, r.body_text())
    }

    /// A query string that does not parse (`?from=yesterday`).
    pub fn from_query_rejection(r: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", r.body_text())
    }

    /// A path segment that does not decode (`/api/v1/devices/%ff%fe` is not UTF-8).
    pub fn from_path_rejection(r: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", r.body_text())
    }
}

/// The body of every error answer, as `/openapi.json` describes it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A short code (`unknown_device`, `bad_query`, `forbidden`…).
    pub error: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
    /// When to try again, when the server knows (a busy device's ready time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            detail: self.message,
            until: self.retry_at.map(|(until, _)| until),
        };
        let Some((_, secs)) = self.retry_at else {
            return (self.status, Json(body)).into_response();
        };
        (
            self.status,
            [(axum::http::header::RETRY_AFTER, secs.max(1).to_string())],
            Json(body),
        )
            .into_response()
    }
}
