//! Helpers for the wait-queue tests: a backend that records the order it is reached in.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;

use super::{channel_body, full, spawn_backend, Backend};

/// A backend that records each request's path; `/hold` streams a first piece and stays open
/// until the client goes away.
pub async fn recording_backend(seen: Arc<Mutex<Vec<String>>>) -> Backend {
    spawn_backend(move |req| {
        let seen = Arc::clone(&seen);
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            if path == "/hold" {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    tx.send(Bytes::from("held")).await.ok();
                    tx.closed().await;
                });
                return Response::new(body);
            }
            seen.lock().unwrap().push(path);
            Response::new(full("ok"))
        })
    })
    .await
}
