//! The one error type of the API: a status, a stable code, a message and a fix, as JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer: `{"error": {"code", "message", "fix"?, "findings"?, "errors"?}}`.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable snake_case code (docs/ADMIN-API.md).
    pub code: &'static str,
    /// What happened.
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
    /// Certificate lint findings, when the error is about certificates.
    pub findings: Option<serde_json::Value>,
    /// Line errors, when the error is about a file's text (the ACL).
    pub errors: Option<Vec<LineError>>,
    /// Seconds to wait (429).
    pub retry_after: Option<u64>,
}

/// One problem on one line of a text.
#[derive(Debug, Clone, Serialize)]
pub struct LineError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

/// The code of an error answer, kept in the response's extensions for the audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fix: None,
            findings: None,
            errors: None,
            retry_after: None,
        }
    }

    /// Adds the fix.
    #[must_use]
    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(crate) fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub(crate) fn stopped() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the broker is not running",
        )
    }
}

impl From<moat_server::Stopped> for ApiError {
    fn from(_: moat_server::Stopped) -> Self {
        Self::stopped()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    findings: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [LineError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                fix: self.fix.as_deref(),
                findings: self.findings.as_ref(),
                errors: self.errors.as_deref(),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

/// A handler's result.
pub(crate) type ApiResult<T> = Result<T, ApiError>;
