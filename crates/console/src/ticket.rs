//! Console tickets: random secrets shown once, stored only as their SHA-256.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Random bytes in a ticket: 256 bits (the issue asks for at least 128), so guessing one is
/// hopeless even with a 30 s window and many attempts per second.
pub const TICKET_BYTES: usize = 32;
/// Length of a ticket's text: unpadded base64url of [`TICKET_BYTES`] bytes.
pub const TICKET_LEN: usize = 43;

/// The secret a viewer presents once. Its `Debug` shows nothing of it; it is never stored
/// ([`TicketHash`] is) and never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket(String);

impl Ticket {
    /// A new ticket from the operating system's random number generator.
    pub fn generate() -> Result<Ticket, TicketStoreError> {
        let mut bytes = [0u8; TICKET_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| TicketStoreError::Random(e.to_string()))?;
        Ok(Ticket(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A ticket presented by a viewer, if it has the shape of one (43 base64url characters).
    /// Anything else cannot have been minted here and is refused without asking the store.
    pub fn parse(text: &str) -> Option<Ticket> {
        let well_formed = text.len() == TICKET_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Ticket(text.to_owned()))
    }

    /// The text to hand to the viewer (it goes into the console URL).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the store keeps: SHA-256 of the ticket's text.
    pub fn hash(&self) -> TicketHash {
        TicketHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticket(<redacted>)")
    }
}

/// SHA-256 of a ticket: the key of the ticket table. Knowing it does not let anyone open a
/// console (the preimage is 256 random bits).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TicketHash([u8; 32]);

impl TicketHash {
    /// The 32 bytes (the `hash` column: BLOB in SQLite, BYTEA in PostgreSQL).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A hash read back from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> TicketHash {
        TicketHash(bytes)
    }
}

impl fmt::Debug for TicketHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A prefix is enough to tell two apart in a log.
        write!(f, "TicketHash(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Why a ticket does not open a console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRefusal {
    /// Never minted, malformed, purged, or past its expiry without having been used.
    UnknownOrExpired,
    /// Redeemed before (by this or any other process on the same store).
    AlreadyUsed,
    /// Minted for another VM. Presenting it consumed it all the same: a ticket seen on the
    /// wrong URL may have leaked.
    OtherVm,
}

/// The answer of [`TicketStore::redeem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// The ticket was valid for this VM and is now consumed; it was minted for `user_id`.
    Granted {
        /// The user the ticket was minted for.
        user_id: i64,
    },
    /// Refused; `user_id` is the ticket's user when the store knows it (for the log line).
    Refused {
        /// Why.
        refusal: TicketRefusal,
        /// The user the ticket was minted for, if the ticket exists.
        user_id: Option<i64>,
    },
}

/// A stored ticket, as the store reads it back when the consuming statement matched nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRow {
    /// The user it was minted for.
    pub user_id: i64,
    /// The VM it was minted for.
    pub vm_id: String,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// When it was redeemed, if it was.
    pub used_at: Option<DateTime<Utc>>,
}

impl Redemption {
    /// The consuming statement matched the ticket (unused, unexpired) and consumed it; it was
    /// minted for (`user_id`, `ticket_vm`). Granted when that is the VM asked for.
    pub fn consumed(user_id: i64, ticket_vm: &str, asked_vm: &str) -> Redemption {
        if ticket_vm == asked_vm {
            Redemption::Granted { user_id }
        } else {
            Redemption::Refused {
                refusal: TicketRefusal::OtherVm,
                user_id: Some(user_id),
            }
        }
    }

    /// The consuming statement matched nothing; `row` is the ticket read back by its hash (if
    /// it exists). A used ticket says so even after its expiry; otherwise it expired.
    pub fn not_consumed(row: Option<&TicketRow>) -> Redemption {
        match row {
            None => Redemption::Refused {
                refusal: TicketRefusal::UnknownOrExpired,
                user_id: None,
            },
            Some(row) => Redemption::Refused {
                refusal: if row.used_at.is_some() {
                    TicketRefusal::AlreadyUsed
                } else {
                    TicketRefusal::UnknownOrExpired
                },
                user_id: Some(row.user_id),
            },
        }
    }
}

/// What can go wrong while minting or redeeming.
#[derive(Debug, thiserror::Error)]
pub enum TicketStoreError {
    /// The database (or whatever backs the store) failed.
    #[error("ticket store unavailable: {0}")]
    Unavailable(String),
    /// The in-memory store holds its maximum of live tickets.
    #[error("too many live console tickets (at most {capacity})")]
    Full {
        /// Its capacity.
        capacity: usize,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness for a ticket: {0}")]
    Random(String),
}

/// Where tickets live. The host implements it on its store (SQLite or PostgreSQL, the SQL is
/// in [`crate::sql`] and `docs/console.md`), so that a ticket minted by one process can be
/// redeemed by another on the same database.
#[async_trait]
pub trait TicketStore: Send + Sync {
    /// Keep a new ticket's hash, bound to `user_id` and `vm_id`, valid until `expires_at`.
    async fn mint(
        &self,
        hash: &TicketHash,
        user_id: i64,
        vm_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), TicketStoreError>;

    /// Consume the ticket if it exists, is unused and `now < expires_at`, in **one atomic
    /// step** (one statement), whatever VM is asked for, so that of any number of concurrent
    /// attempts at most one succeeds. Then say which answer applies: use
    /// [`Redemption::consumed`] with the consumed row, or [`Redemption::not_consumed`] with
    /// the row read back by its hash (that read only explains; it decides nothing).
    async fn redeem(
        &self,
        hash: &TicketHash,
        vm_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Redemption, TicketStoreError>;

    /// Delete tickets that expired before `before`; returns how many. Used tickets are kept
    /// until then too, so that a replay is answered "already used" rather than "unknown".
    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, TicketStoreError>;
}

/// Tickets in this process's memory, for one process only: the bench binary and tests.
/// **Not** for `infinibay serve`: a ticket minted by one process could not be redeemed by
/// another (the failure of seed 004). Bounded: at most `capacity` tickets; expired ones are
/// dropped when it is full.
#[derive(Debug)]
pub struct MemoryTicketStore {
    capacity: usize,
    tickets: Mutex<HashMap<TicketHash, TicketRow>>,
}

impl MemoryTicketStore {
    /// A store holding at most `capacity` tickets.
    pub fn new(capacity: usize) -> MemoryTicketStore {
        MemoryTicketStore {
            capacity,
            tickets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TicketHash, TicketRow>> {
        // The map is consistent after every statement; a panic elsewhere cannot tear it.
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tickets held (used and expired ones until purged).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No ticket held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl TicketStore for MemoryTicketStore {
    async fn mint(
        &self,
        hash: &TicketHash,
        user_id: i64,
        vm_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), TicketStoreError> {
        let mut tickets = self.lock();
        if tickets.len() >= self.capacity {
            let now = Utc::now();
            tickets.retain(|_, row| row.expires_at > now);
            if tickets.len() >= self.capacity {
                return Err(TicketStoreError::Full {
                    capacity: self.capacity,
                });
            }
        }
        tickets.insert(
            *hash,
            TicketRow {
                user_id,
                vm_id: vm_id.to_owned(),
                expires_at,
                used_at: None,
            },
        );
        Ok(())
    }

    async fn redeem(
        &self,
        hash: &TicketHash,
        vm_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Redemption, TicketStoreError> {
        let mut tickets = self.lock();
        match tickets.get_mut(hash) {
            Some(row) if row.used_at.is_none() && now < row.expires_at => {
                row.used_at = Some(now);
                Ok(Redemption::consumed(row.user_id, &row.vm_id, vm_id))
            }
            row => Ok(Redemption::not_consumed(row.as_deref())),
        }
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, TicketStoreError> {
        let mut tickets = self.lock();
        let had = tickets.len();
        tickets.retain(|_, row| row.expires_at >= before);
        Ok((had - tickets.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tickets_are_43_base64url_characters_and_parse_back() {
        let ticket = Ticket::generate().expect("OS randomness");
        assert_eq!(ticket.as_str().len(), TICKET_LEN);
        assert_eq!(Ticket::parse(ticket.as_str()), Some(ticket.clone()));
        let decoded = URL_SAFE_NO_PAD.decode(ticket.as_str()).expect("base64url");
        assert_eq!(decoded.len(), TICKET_BYTES);
    }

    #[test]
    fn malformed_tickets_do_not_parse() {
        assert_eq!(Ticket::parse(""), None);
        assert_eq!(Ticket::parse(&"a".repeat(42)), None);
        assert_eq!(Ticket::parse(&"a".repeat(44)), None);
        assert_eq!(Ticket::parse(&format!("{}=", "a".repeat(42))), None);
        assert_eq!(Ticket::parse(&format!("{}/", "a".repeat(42))), None);
    }

    #[test]
    fn debug_output_shows_neither_the_ticket_nor_the_whole_hash() {
        let ticket = Ticket::generate().expect("OS randomness");
        assert!(!format!("{ticket:?}").contains(ticket.as_str()));
        let hash = ticket.hash();
        let hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{hash:?}").contains(&hex));
    }

    #[test]
    fn a_thousand_tickets_are_all_different() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(Ticket::generate().expect("OS randomness").hash()));
        }
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_tickets_text() {
        let ticket = Ticket::parse(&"A".repeat(TICKET_LEN)).expect("well-formed");
        // Checked against an independent implementation: coreutils' sha256sum.
        let hex: String = ticket
            .hash()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, sha256_hex_of(ticket.as_str()));
    }

    fn sha256_hex_of(text: &str) -> String {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(text.as_bytes())?;
                child.wait_with_output()
            })
            .expect("sha256sum runs");
        String::from_utf8_lossy(&out.stdout)[..64].to_owned()
    }

    // The in-memory store's answers are checked by the same story as the SQL backends
    // (tests/ticket_stores.rs); here only what is its own.

    #[tokio::test]
    async fn memory_store_is_bounded_and_makes_room_by_dropping_expired_tickets() {
        let store = MemoryTicketStore::new(2);
        let far = Utc::now() + chrono::Duration::hours(1);
        let past = Utc::now() - chrono::Duration::seconds(1);
        let hashes: Vec<TicketHash> = (0..3)
            .map(|_| Ticket::generate().expect("OS randomness").hash())
            .collect();
        store.mint(&hashes[0], 1, "vm", past).await.expect("mint");
        store.mint(&hashes[1], 1, "vm", far).await.expect("mint");
        store
            .mint(&hashes[2], 1, "vm", far)
            .await
            .expect("room made by dropping the expired ticket");
        let fourth = Ticket::generate().expect("OS randomness").hash();
        assert!(matches!(
            store.mint(&fourth, 1, "vm", far).await,
            Err(TicketStoreError::Full { capacity: 2 })
        ));
        assert_eq!(
            store
                .purge_expired(far + chrono::Duration::seconds(1))
                .await
                .expect("purge"),
            2
        );
        assert!(store.is_empty());
    }
}
