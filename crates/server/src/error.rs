//! Errors as the OpenAI API reports them: `{"error": {"message", "type", "param", "code"}}` with
//! the matching HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Longest message an error answer carries: a message built from a damaged file or a provider's
/// answer can be any size, an answer cannot.
const MAX_MESSAGE_BYTES: usize = 2000;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] (on a character boundary) with the cut said.
pub fn bounded(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message.into();
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &message[..end], message.len() - end).into()
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    /// Seconds the client should wait (429 and 503 say 1 unless this says otherwise).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn model_not_found(model: &str, served: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model".into()),
            message: format!("The model `{model}` does not exist; this server serves `{served}`."),
            retry_after: None,
        }
    }

    pub fn context_length(max: usize, prompt: usize) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: Some("context_length_exceeded"),
            param: Some("messages".into()),
            message: format!(
                "This model's maximum context length is {max} tokens. However, your messages resulted in {prompt} tokens."
            ),
            retry_after: None,
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            code: Some("invalid_api_key"),
            param: None,
            message: "Incorrect API key provided.".into(),
            retry_after: None,
        }
    }

    pub fn overloaded(queued: usize) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "requests",
            code: Some("rate_limit_exceeded"),
            param: None,
            message: format!("The server is busy ({queued} requests waiting). Please try again in 1s."),
            retry_after: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Logs a request refused before it was admitted (admitted ones are logged by their
    /// record): one line, as admitted requests have.
    pub fn refused(self, front: &'static str) -> ApiError {
        tracing::info!(
            front, status = self.status.as_u16(), code = self.code.unwrap_or("-"),
            param = self.param.as_deref().unwrap_or("-"), error = %bounded(&self.message), "request refused"
        );
        self
    }

    /// The request field at fault.
    pub fn with_param(mut self, param: Option<&str>) -> ApiError {
        self.param = param.map(String::from);
        self
    }

    /// A request body that is not a valid request.
    pub fn invalid(e: baimo_api::RequestError) -> ApiError {
        let param = e.param.clone();
        ApiError { param, ..ApiError::bad_request(e.message) }
    }

    /// A hosted provider's failure, as the client sees it (the status and retry hint it maps
    /// to; the message names the provider, never a credential).
    pub fn upstream(e: &baimo_gateway::UpstreamError) -> ApiError {
        let (kind, code) = e.openai_type_code();
        ApiError {
            status: StatusCode::from_u16(e.client_status()).unwrap_or(StatusCode::BAD_GATEWAY),
            kind,
            code: Some(code),
            param: None,
            message: e.to_string(),
            retry_after: crate::usage::retry_after_secs(e),
        }
    }

    pub fn with_retry_after(mut self, seconds: Option<u64>) -> ApiError {
        self.retry_after = seconds;
        self
    }

    /// The key is good but may not use this model.
    pub fn forbidden_model(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "invalid_request_error",
            code: Some("model_not_allowed"),
            param: Some("model".into()),
            message: format!("This API key may not use the model `{model}`."),
            retry_after: None,
        }
    }

    /// The `Retry-After` to send: 429 and 503 say 1 second unless told otherwise; an exhausted
    /// quota says nothing (waiting does not help).
    pub fn retry_seconds(&self) -> Option<u64> {
        let transient =
            matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
                && self.code != Some("insufficient_quota");
        self.retry_after.or(transient.then_some(1))
    }

    /// Whether trying again cannot help (SDKs read `x-should-retry: false` and do not retry): a
    /// request the server refused, an exhausted quota, upstream credentials that are wrong.
    pub fn is_permanent(&self) -> bool {
        let status = self.status.as_u16();
        (400..500).contains(&status) && !matches!(status, 408 | 409 | 429)
            || self.code == Some("insufficient_quota")
            || self.code == Some("upstream_authentication_failed")
    }

    fn retry_headers(&self, response: &mut Response) {
        if let Some(seconds) = self.retry_seconds() {
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from(seconds));
        }
        if self.is_permanent() {
            response.headers_mut().insert("x-should-retry", axum::http::HeaderValue::from_static("false"));
        }
    }

    /// The error in Anthropic's envelope, with the status Anthropic would use (529 for
    /// overloaded).
    pub fn anthropic_response(self) -> Response {
        let (status, kind) = match self.status {
            StatusCode::UNAUTHORIZED => (self.status, "authentication_error"),
            StatusCode::FORBIDDEN => (self.status, "permission_error"),
            StatusCode::NOT_FOUND => (self.status, "not_found_error"),
            StatusCode::BAD_REQUEST => (self.status, "invalid_request_error"),
            StatusCode::TOO_MANY_REQUESTS => (self.status, "rate_limit_error"),
            StatusCode::SERVICE_UNAVAILABLE => {
                (StatusCode::from_u16(529).unwrap_or(self.status), "overloaded_error")
            }
            _ => (self.status, "api_error"),
        };
        let mut response =
            (status, Json(baimo_api::anthropic::error_json(kind, &bounded(&self.message)))).into_response();
        self.retry_headers(&mut response);
        response
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": bounded(&self.message), "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        self.retry_headers(&mut response);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_on_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(5000);
        let b = bounded(&long);
        assert!(
            b.len() < MAX_MESSAGE_BYTES + 40 && b.ends_with("(8000 more bytes)"),
            "{}",
            &b[b.len() - 30..]
        );
        let body = ApiError::unavailable(long).body().to_string();
        assert!(body.len() < 2100, "{}", body.len());
    }
}
