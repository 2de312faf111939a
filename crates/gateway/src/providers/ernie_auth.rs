//! ERNIE v1's access token (for `ernie`): bought at `POST /oauth/2.0/token` with the app's API
//! key and secret key, cached per channel in [`TokenCache`](super::TokenCache), and bought anew
//! once when the provider refuses one (invalid or expired) mid-request.

use std::time::Duration;

use serde_json::Value;

use super::Upstream;
use super::ernie::{NAME, body_error, protocol_error};
use super::http::{self, read_limited};
use crate::channel::{Channel, Secret};
use crate::error::{ErrorKind, UpstreamError};

/// What the token endpoint says when it does not say (`expires_in` is 30 days).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// A longer lifetime from the wire is not believed (and would overflow an `Instant`).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(60 * 86_400);
/// The largest token answer read.
const MAX_TOKEN_BODY: usize = 64 << 10;

/// The provider refused the access token (invalid 110, expired 111): worth one more try with
/// a new one.
pub(crate) fn token_rejected(e: &UpstreamError) -> bool {
    e.kind == ErrorKind::Auth
        && (e.message.ends_with("(error_code 110)") || e.message.ends_with("(error_code 111)"))
}

/// `url` with a form-encoded query string.
pub(crate) fn with_query(url: String, params: &[(&str, &str)]) -> String {
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    format!("{url}?{query}")
}

/// The channel's access token: cached, or bought with its API key and secret key.
pub(crate) async fn access_token(up: &Upstream, channel: &Channel) -> Result<Secret, UpstreamError> {
    let secret = channel.secret_key.as_ref().ok_or_else(|| {
        UpstreamError::new(
            NAME,
            ErrorKind::Auth,
            "an ERNIE v1 channel needs `secret_key` (the app's Secret Key)",
        )
    })?;
    up.tokens
        .get_or_fetch(&channel.name, || async {
            let url = with_query(
                format!("{}/oauth/2.0/token", channel.base_url()),
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", channel.api_key.expose()),
                    ("client_secret", secret.expose()),
                ],
            );
            let request = up.http.post(url).send();
            let response = tokio::time::timeout(up.timeout, request)
                .await
                .map_err(|_| UpstreamError::new(NAME, ErrorKind::Timeout, "no access token in time"))?
                .map_err(|e| http::connection_error(NAME, e))?;
            let status = response.status().as_u16();
            let body = read_limited(response, MAX_TOKEN_BODY).await?;
            token_from(status, &body)
        })
        .await
}

/// The token endpoint's answer: the token and its lifetime, or why not.
fn token_from(status: u16, body: &[u8]) -> Result<(Secret, Duration), UpstreamError> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(error) = v.get("error").and_then(Value::as_str) {
        let detail = v.get("error_description").and_then(Value::as_str).unwrap_or("");
        let kind = if error == "invalid_client" { ErrorKind::Auth } else { ErrorKind::BadRequest };
        return Err(UpstreamError::new(NAME, kind, format!("access token refused: {error}: {detail}"))
            .with_status(status));
    }
    if let Some(e) = body_error(&v) {
        return Err(e.with_status(status));
    }
    if status >= 500 {
        return Err(UpstreamError::new(NAME, ErrorKind::Server, format!("token endpoint: HTTP {status}"))
            .with_status(status));
    }
    let token =
        v.get("access_token").and_then(Value::as_str).filter(|t| !t.is_empty()).ok_or_else(|| {
            protocol_error(format!("the token endpoint (HTTP {status}) gave no access_token"))
        })?;
    let lifetime = v
        .get("expires_in")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .min(MAX_TOKEN_LIFETIME);
    Ok((Secret::new(token), lifetime))
}

/// Runs `call`; if the provider refused the access token, forgets it and runs `call` once more
/// with a new one (a token can be revoked before its 30 days are up).
pub(crate) async fn with_fresh_token<T, F, Fut>(
    up: &Upstream,
    channel: &Channel,
    call: F,
) -> Result<T, UpstreamError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, UpstreamError>>,
{
    match call().await {
        Err(e) if token_rejected(&e) => {
            up.tokens.invalidate(&channel.name);
            call().await
        }
        other => other,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers() {
        let (token, life) = token_from(200, br#"{"access_token":"24.abc","expires_in":2592000}"#).unwrap();
        assert_eq!((token.expose(), life), ("24.abc", Duration::from_secs(2_592_000)));
        let (_, life) = token_from(200, br#"{"access_token":"24.abc","expires_in":99999999999}"#).unwrap();
        assert_eq!(life, MAX_TOKEN_LIFETIME);
        let e = token_from(401, br#"{"error":"invalid_client","error_description":"unknown client id"}"#)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth);
        assert_eq!(token_from(502, b"").unwrap_err().kind, ErrorKind::Server);
        assert_eq!(token_from(200, b"{}").unwrap_err().kind, ErrorKind::Protocol);
    }
}
