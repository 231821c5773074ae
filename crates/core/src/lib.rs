//! Core types shared by every Mica crate.
//!
//! Architecture invariant: this crate does no IO. It holds validated newtypes (an `Email` is always
//! normalised and valid, a `PhoneE164` always a valid E.164 number), the injected clock, and the
//! cryptographic primitives used for personal data at rest and for tokens.

pub mod archive;
pub mod clock;
pub mod crypto;
pub mod ident;
pub mod ids;
pub mod notices;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use ident::{Email, IdentError, Login, PhoneE164};
pub use ids::{AccountId, SessionId};
