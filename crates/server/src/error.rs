//! Errors as the OpenAI API reports them: `{"error": {"message", "type", "param", "code"}}` with
//! the matching HTTP status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
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
            param: Some("model"),
            message: format!("The model `{model}` does not exist; this server serves `{served}`."),
            retry_after: None,
        }
    }

    pub fn context_length(max: usize, prompt: usize) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: Some("context_length_exceeded"),
            param: Some("messages"),
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
            param: Some("model"),
            message: format!("This API key may not use the model `{model}`."),
            retry_after: None,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        let mut response = (self.status, Json(self.body())).into_response();
        if retry {
            let seconds = self.retry_after.unwrap_or(1);
            response.headers_mut().insert("retry-after", axum::http::HeaderValue::from(seconds));
        }
        response
    }
}
