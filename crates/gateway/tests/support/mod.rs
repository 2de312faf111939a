//! Shared by the provider tests: a stream gathered into its events, and the text of events.
#![allow(dead_code)]

use baimo_gateway::{ChatRequest, Gateway, StreamEvent, UpstreamError};
use futures_util::StreamExt;

/// The stream's events, and the error that ended it (if one did).
pub async fn collect(gw: &Gateway, req: &ChatRequest) -> (Vec<StreamEvent>, Option<UpstreamError>) {
    let mut stream = gw.chat_stream(req).await.map_err(|f| f.error).unwrap().value;
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

/// The text the events carry, joined.
pub fn text_of(events: &[StreamEvent]) -> String {
    events.iter().filter_map(|e| if let StreamEvent::Text(t) = e { Some(t.as_str()) } else { None }).collect()
}
