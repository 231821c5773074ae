//! How a domain writes to an account's owner without knowing how their addresses are kept:
//! the identity crate implements [`OwnerNotices`] (mail, or SMS to an account without email),
//! and the crates that have something to tell — the cloud when storage runs out — are handed
//! it at start-up.

use std::future::Future;
use std::pin::Pin;

use crate::AccountId;

/// Sends the owner of an account a message: a subject (for mail) and a text. Best effort: the
/// implementation logs what it could not send.
pub trait OwnerNotices: Send + Sync {
    fn tell<'a>(
        &'a self,
        account: AccountId,
        subject: &'a str,
        text: String,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}
