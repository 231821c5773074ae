//! How a domain writes to an account's owner without knowing how their addresses are kept:
//! the identity crate implements [`OwnerNotices`] (mail, or SMS to an account without email),
//! and the crates that have something to tell — the cloud when storage runs out — are handed
//! it at start-up. The other way, [`DeviceNotices`] reaches the account's connected devices:
//! the devices crate (linked devices' command channels) and the cloud (signed-in apps' sync
//! channels) implement it, and identity is handed them.

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

/// Something an account's devices should show their user now (a request to recover the
/// account, say), sent over the channels they keep open.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeviceNotice {
    /// `ntc_…`: a linked device says it has shown the notice (`seen`), and is not sent it
    /// again; a device shows each id once.
    pub id: String,
    /// What it is about, for software: e.g. `recovery_requested`.
    pub kind: String,
    /// A title, for a person.
    pub title: String,
    pub text: String,
    /// When it was sent (RFC 3339).
    pub sent_at: String,
}

/// What a stored notice keeps sealed (under [`NOTICE_FIELD`]): its title and text.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NoticeBody {
    pub title: String,
    pub text: String,
}

/// The field name a stored notice's body is sealed under.
pub const NOTICE_FIELD: &str = "device_notice";

/// Tells every device of an account that is connected to this node now. The sender stores the
/// notice first (`device_notices`), so a linked device that is not connected is sent it when
/// it next connects, until the notice expires or is withdrawn.
pub trait DeviceNotices: Send + Sync {
    fn tell_devices(&self, account: AccountId, notice: &DeviceNotice);
}
