//! The gateway to hosted models. A client's request arrives in OpenAI's shape ([`ChatRequest`]);
//! the [`Gateway`] picks a channel for its model (priority, weight, health), speaks that
//! provider's own protocol (`providers`), retries and fails over as the error allows, and hands
//! back an OpenAI-shaped answer or a stream of [`StreamEvent`]s. `mock` holds faithful stand-ins
//! for the providers (used by the tests, runnable with `baimo mock-provider`).

pub mod channel;
pub mod error;
pub mod gateway;
pub mod mock;
pub mod providers;
pub mod sse;
pub use baimo_api::types;

pub use channel::{Channel, ProviderKind, Secret};
pub use error::{ErrorKind, UpstreamError};
pub use gateway::{Attempt, EventStream, Failed, Gateway, GatewayError, Progress, RetryPolicy, Served};
pub use types::{ChatRequest, ChatResponse, FinishReason, StreamEvent, ToolCall, Usage};
