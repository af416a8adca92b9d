//! Why a delivery was not accepted, and the HTTP answer for each reason.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kommo_pay_core::event_log::PayloadError;
use kommo_pay_core::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No account with that slug, or it does not use the provider.
    #[error("unknown account")]
    UnknownAccount,
    /// The sender could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authentic, but not a delivery we can read, or outside the signature's time window.
    #[error("{0}")]
    BadRequest(String),
    /// The event could not be committed in time; the provider should retry. The cause, for the
    /// log only.
    #[error("the event log is unavailable")]
    Unavailable(String),
    /// The server is shutting down and took no new work.
    #[error("the server is stopping")]
    Stopping,
}

impl IngestError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::UnknownAccount => "unknown_account",
            IngestError::Unauthenticated(_) => "unauthenticated",
            IngestError::BadRequest(_) => "bad_request",
            IngestError::Unavailable(_) | IngestError::Stopping => "unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            IngestError::UnknownAccount => StatusCode::NOT_FOUND,
            IngestError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            IngestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IngestError::Unavailable(_) | IngestError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A failed append: the database refusing this payload's data (SQLSTATE class 22, e.g. a
    /// `\u0000` that `jsonb` cannot hold) is the delivery's fault and no retry fixes it; anything
    /// else is the database's, and the provider should retry.
    pub(crate) fn from_database(error: &sqlx::Error) -> IngestError {
        match error {
            sqlx::Error::Database(db) if refuses_data(error) => IngestError::BadRequest(format!("the delivery cannot be stored: {}", db.message())),
            _ => IngestError::Unavailable(error.to_string()),
        }
    }
}

/// Whether the database refused the data itself (SQLSTATE class 22), not the request.
pub(crate) fn refuses_data(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")))
}

impl From<SignatureError> for IngestError {
    fn from(e: SignatureError) -> Self {
        if e.is_unauthenticated() { IngestError::Unauthenticated(e.to_string()) } else { IngestError::BadRequest(e.to_string()) }
    }
}

impl From<PayloadError> for IngestError {
    fn from(e: PayloadError) -> Self {
        IngestError::BadRequest(format!("malformed delivery: {e}"))
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        // The client sees the reason and, except for database failures, the message: neither
        // ever holds a secret or the body. The database error itself goes only to the log.
        let detail = match &self {
            IngestError::Unavailable(_) => "the event could not be stored; retry later".to_owned(),
            other => other.to_string(),
        };
        let mut response = (self.status(), Json(serde_json::json!({ "error": self.reason(), "detail": detail }))).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("5"));
        }
        response
    }
}
