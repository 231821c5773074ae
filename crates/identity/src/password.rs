//! Password policy and hashing.
//!
//! Hashing is argon2id and runs on a dedicated pool of threads, one per core, fed by a queue: a
//! burst of sign-ins waits in the queue instead of starving the async runtime and every other
//! request, and a hashing thread takes its next job the moment it finishes one (no round trip
//! through the async scheduler between two hashes).

use std::sync::{mpsc, Arc, Mutex};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use crate::IdentityError;

/// argon2id cost. Defaults are OWASP's minimum recommendation: 19 MiB, 2 passes, 1 lane.
#[derive(Debug, Clone, Copy, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashCost {
    fn argon2(&self) -> Result<Argon2<'static>, IdentityError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| IdentityError::Internal(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run hashing jobs from one queue.
#[derive(Debug)]
struct Pool {
    queue: Mutex<mpsc::Sender<Job>>,
}

impl Pool {
    fn new(threads: usize) -> Result<Self, IdentityError> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("mica-hash-{i}"))
                .spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                        guard.recv()
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // every sender is gone: shut down
                    }
                })
                .map_err(|e| IdentityError::Internal(format!("starting hashing threads: {e}")))?;
        }
        Ok(Pool {
            queue: Mutex::new(tx),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| IdentityError::Internal("hashing pool stopped".into()))?;
        rx.await
            .map_err(|_| IdentityError::Internal("hashing job lost".into()))
    }
}

/// The bounded argon2id pool.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    cost: HashCost,
    pool: Arc<Pool>,
    dummy: Arc<String>,
}

impl PasswordHasher {
    /// `slots`: how many hashes may run at once (the number of cores).
    pub fn new(cost: HashCost, slots: usize) -> Result<Self, IdentityError> {
        let argon = cost.argon2()?;
        // A real hash of a random secret: verifying against it costs what a real verify costs,
        // so "no such account" takes as long as "wrong password".
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon
            .hash_password(mica_core::crypto::random_token_string(24).as_bytes(), &salt)
            .map_err(|e| IdentityError::Internal(format!("argon2: {e}")))?
            .to_string();
        Ok(PasswordHasher {
            cost,
            pool: Arc::new(Pool::new(slots)?),
            dummy: Arc::new(dummy),
        })
    }

    pub fn cost(&self) -> HashCost {
        self.cost
    }

    pub async fn hash(&self, password: &SecretString) -> Result<String, IdentityError> {
        let cost = self.cost;
        let pw = password.clone();
        self.pool
            .run(move || {
                let salt = SaltString::generate(&mut OsRng);
                cost.argon2()?
                    .hash_password(pw.expose_secret().as_bytes(), &salt)
                    .map(|h| h.to_string())
                    .map_err(|e| IdentityError::Internal(format!("argon2: {e}")))
            })
            .await?
    }

    /// Verifies `password` against a stored PHC string; `None` verifies against the dummy hash
    /// (and always fails), for accounts that do not exist.
    pub async fn verify(
        &self,
        password: &SecretString,
        phc: Option<&str>,
    ) -> Result<bool, IdentityError> {
        let (phc, real) = match phc {
            Some(p) => (p.to_owned(), true),
            None => (self.dummy.as_str().to_owned(), false),
        };
        let pw = password.clone();
        let ok = self
            .pool
            .run(move || {
                let parsed = PasswordHash::new(&phc)
                    .map_err(|e| IdentityError::Internal(format!("stored hash: {e}")))?;
                // Parameters come from the stored hash, so raising the cost later keeps old hashes valid.
                Ok::<_, IdentityError>(
                    Argon2::default()
                        .verify_password(pw.expose_secret().as_bytes(), &parsed)
                        .is_ok(),
                )
            })
            .await??;
        Ok(ok && real)
    }
}

/// Checks a new password against the policy (ID-3). `context` holds what the password must not
/// resemble: the person's email, phone, account number.
pub fn check_policy(password: &str, context: &[&str]) -> Result<(), IdentityError> {
    let weak = |msg: String| Err(IdentityError::WeakPassword(msg));
    let n = password.chars().count();
    if n < 8 {
        return weak("the password needs at least 8 characters".into());
    }
    if password.len() > 256 {
        return weak("the password is longer than 256 bytes".into());
    }
    if password.chars().any(char::is_control) {
        return weak("the password contains control characters".into());
    }
    let letter = password.chars().any(char::is_alphabetic);
    let digit = password.chars().any(|c| c.is_ascii_digit());
    let symbol = password.chars().any(|c| !c.is_alphanumeric());
    if !(letter && digit && symbol) {
        return weak(
            "the password needs letters, digits and at least one symbol (such as ! or #)".into(),
        );
    }
    let estimate = zxcvbn::zxcvbn(password, context);
    if estimate.score() < zxcvbn::Score::Three {
        let mut msg = String::from("this password is too easy to guess");
        if let Some(fb) = estimate.feedback() {
            if let Some(w) = fb.warning() {
                msg.push_str(&format!(": {w}"));
            }
            if let Some(s) = fb.suggestions().first() {
                msg.push_str(&format!(". {s}"));
            }
        }
        return weak(msg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_simple_and_common() {
        for pw in [
            "",
            "a1!",
            "abcdefgh",
            "abcd1234",
            "Password1!",
            "P@ssw0rd1",
            "qwerty123!",
        ] {
            assert!(check_policy(pw, &[]).is_err(), "{pw} accepted");
        }
        assert!(check_policy("ana.smith@example.com1!", &["ana.smith@example.com"]).is_err());
        assert!(check_policy("correct-Horse-battery-9", &[]).is_ok());
        assert!(check_policy("Tr0ub4dor&3-xk", &[]).is_ok());
    }

    #[tokio::test]
    async fn hash_and_verify() {
        let h = PasswordHasher::new(
            HashCost {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            2,
        )
        .expect("hasher");
        let pw = SecretString::from("correct-Horse-battery-9");
        let phc = h.hash(&pw).await.expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(h.verify(&pw, Some(&phc)).await.expect("verify"));
        assert!(!h
            .verify(&SecretString::from("nope"), Some(&phc))
            .await
            .expect("verify"));
        assert!(!h.verify(&pw, None).await.expect("verify"));
    }
}
