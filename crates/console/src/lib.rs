//! The web console of infinibay VMs: a browser (noVNC) reaches a VM's VNC server through a
//! WebSocket, authorised by a single-use ticket.
//!
//! The path of a console session:
//!
//! 1. **mint** ([`Console::issue_ticket`]): the API, after its own access check, asks for a
//!    ticket bound to (user, VM). The ticket is 256 random bits from the OS; only its SHA-256
//!    ([`TicketHash`]) goes to the [`TicketStore`], so that any process on the same database can
//!    redeem it and nobody who reads the database can.
//! 2. **upgrade** (`GET /console/{vm_id}?ticket=…[&takeover=1]`, [`Console::router`]): the
//!    ticket is consumed by one atomic [`TicketStore::redeem`] before the WebSocket handshake
//!    is answered; then the [`ConsoleGate`] (the host's access rules and VM state) says whether
//!    the user may still open this VM's console and where its VNC server listens; then the
//!    [`registry`](Console::sessions) enforces one console per user per VM (unless the viewer
//!    asked to take over, which ends the older one).
//! 3. **refusal**: every refusal still completes the handshake and then closes with its own
//!    [`CloseCode`] in 4000–4999 and a reason, because a browser exposes nothing of a refused
//!    handshake (a `WebSocket` only ever reports 1006 for it). The server logs each refusal
//!    with user, VM and remote address (target `infinibay::console`).
//! 4. **relay**: bytes both ways between the WebSocket (subprotocol `binary`, as noVNC asks)
//!    and the VNC socket, with backpressure both ways, bounded buffers, keepalive pings, and
//!    ends from outside ([`Console::end_user`], [`Console::end_vm`], [`Console::shutdown`]).
//! 5. **audit**: one [`AuditRecord`] per attempt (who, from where, when, how long, how it
//!    ended) to the host's [`AuditSink`].
//!
//! **Invariant:** a ticket's text is never stored or logged; it exists in the answer to the
//! minting request and in the viewer's URL, nowhere else.
//!
//! See `docs/console.md` for the codes table, the SQL of the ticket table and the benchmark.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod audit;
mod close;
mod registry;
mod relay;
mod service;
pub mod sql;
mod ticket;
mod upgrade;

pub use audit::{AuditRecord, AuditSink, LogAudit};
pub use close::CloseCode;
pub use registry::OpenSession;
pub use service::{
    CONSOLE_ROUTE, Console, ConsoleConfig, ConsoleGate, GateRefusal, IssuedTicket, VncEndpoint,
};
pub use ticket::{
    MemoryTicketStore, Redemption, TICKET_BYTES, TICKET_LEN, Ticket, TicketHash, TicketRefusal,
    TicketRow, TicketStore, TicketStoreError,
};

/// Log target of everything this crate logs.
pub const LOG_TARGET: &str = "infinibay::console";
