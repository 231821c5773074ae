//! An SMS gateway for tests: an HTTP endpoint that accepts Mica's webhook POSTs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use tokio::sync::Notify;

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sms {
    pub to: String,
    pub text: String,
}

#[derive(Clone, Default)]
struct Inbox {
    msgs: Arc<Mutex<Vec<Sms>>>,
    notify: Arc<Notify>,
}

#[derive(Clone)]
pub struct SmsSink {
    pub url: String,
    inbox: Inbox,
}

async fn receive(State(inbox): State<Inbox>, Json(sms): Json<Sms>) -> &'static str {
    inbox.msgs.lock().expect("lock").push(sms);
    inbox.notify.notify_waiters();
    "queued"
}

impl SmsSink {
    pub async fn start() -> SmsSink {
        let inbox = Inbox::default();
        let app = Router::new()
            .route("/sms", post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sms sink");
        let url = format!("http://{}/sms", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SmsSink { url, inbox }
    }

    pub fn all(&self) -> Vec<Sms> {
        self.inbox.msgs.lock().expect("lock").clone()
    }

    /// Waits (at most 10 s of real time) for the `n`-th SMS (1-based) to `to`.
    pub async fn nth_to(&self, to: &str, n: usize) -> Sms {
        self.nth_with(to, "", n).await
    }

    /// Waits (at most 10 s of real time) for the `n`-th SMS (1-based) to `to` whose text
    /// contains `needle` — robust against other messages to the same number (notices).
    pub async fn nth_with(&self, to: &str, needle: &str, n: usize) -> Sms {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.inbox.notify.notified();
            let found: Vec<Sms> = self
                .all()
                .into_iter()
                .filter(|m| m.to == to && m.text.contains(needle))
                .collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "no SMS #{n} to {to} containing {needle:?} within 10 s; got {:?}",
                    self.all()
                );
            }
        }
    }
}
