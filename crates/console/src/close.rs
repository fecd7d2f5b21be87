//! How a console connection ends: WebSocket close codes and the reasons a browser shows.

use std::fmt;

/// Why a console connection was refused or ended. Refusals use 44xx codes (numbered after the
/// nearest HTTP status), ends of an open session 400x, and the standard 1000/1001/1003 keep
/// their meaning. `reason()` is sent in the close frame (at most 123 bytes) and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 4401: no ticket, a malformed one, one never minted, or one past its 30 s.
    TicketUnknownOrExpired,
    /// 4410: the ticket was redeemed before.
    TicketAlreadyUsed,
    /// 4421: the ticket was minted for another VM (it is consumed all the same).
    TicketForAnotherVm,
    /// 4403: the ticket's user may not open this VM's console (any more).
    NotAllowed,
    /// 4404: the VM has no VNC endpoint (no socket, or the VM is unknown).
    NoConsole,
    /// 4409: the VM's VNC endpoint exists but nothing answers on it (the VM is not running).
    NotRunning,
    /// 4423: this user already has this VM's console open; reconnect with `takeover=1` to
    /// replace it.
    AlreadyOpen,
    /// 4503: the ticket store failed; nothing was decided.
    Unavailable,
    /// 4000: the VNC server closed the connection (the VM stopped, or QEMU went away).
    ConsoleClosed,
    /// 4001: the same user opened this console elsewhere and took it over.
    TakenOver,
    /// 4002: the user's access ended (deleted, password changed, VM given to someone else).
    AccessRevoked,
    /// 4003: the viewer stopped answering keepalive pings.
    KeepaliveTimeout,
    /// 1000: the viewer closed the console.
    ViewerClosed,
    /// 1001: the server is shutting down.
    ServerShutdown,
    /// 1003: the viewer sent a text message (the RFB stream is binary).
    UnsupportedData,
    /// 1006: the viewer's connection broke without a close frame. Recorded, never sent.
    ViewerGone,
}

impl CloseCode {
    /// Every code, for tables and tests.
    pub const ALL: [CloseCode; 16] = [
        CloseCode::TicketUnknownOrExpired,
        CloseCode::TicketAlreadyUsed,
        CloseCode::TicketForAnotherVm,
        CloseCode::NotAllowed,
        CloseCode::NoConsole,
        CloseCode::NotRunning,
        CloseCode::AlreadyOpen,
        CloseCode::Unavailable,
        CloseCode::ConsoleClosed,
        CloseCode::TakenOver,
        CloseCode::AccessRevoked,
        CloseCode::KeepaliveTimeout,
        CloseCode::ViewerClosed,
        CloseCode::ServerShutdown,
        CloseCode::UnsupportedData,
        CloseCode::ViewerGone,
    ];

    /// The number in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::TicketUnknownOrExpired => 4401,
            CloseCode::TicketAlreadyUsed => 4410,
            CloseCode::TicketForAnotherVm => 4421,
            CloseCode::NotAllowed => 4403,
            CloseCode::NoConsole => 4404,
            CloseCode::NotRunning => 4409,
            CloseCode::AlreadyOpen => 4423,
            CloseCode::Unavailable => 4503,
            CloseCode::ConsoleClosed => 4000,
            CloseCode::TakenOver => 4001,
            CloseCode::AccessRevoked => 4002,
            CloseCode::KeepaliveTimeout => 4003,
            CloseCode::ViewerClosed => 1000,
            CloseCode::ServerShutdown => 1001,
            CloseCode::UnsupportedData => 1003,
            CloseCode::ViewerGone => 1006,
        }
    }

    /// The reason in the close frame: what the browser shows and the server logs.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::TicketUnknownOrExpired => "unknown or expired ticket",
            CloseCode::TicketAlreadyUsed => "ticket already used",
            CloseCode::TicketForAnotherVm => "ticket for another VM",
            CloseCode::NotAllowed => "not allowed",
            CloseCode::NoConsole => "VM has no console",
            CloseCode::NotRunning => "VM not running",
            CloseCode::AlreadyOpen => "console already open elsewhere; take over to move it here",
            CloseCode::Unavailable => "console service unavailable",
            CloseCode::ConsoleClosed => "console closed by the VM",
            CloseCode::TakenOver => "taken over by a newer console session",
            CloseCode::AccessRevoked => "access revoked",
            CloseCode::KeepaliveTimeout => "keepalive timeout",
            CloseCode::ViewerClosed => "closed by the viewer",
            CloseCode::ServerShutdown => "server shutting down",
            CloseCode::UnsupportedData => "text messages are not supported",
            CloseCode::ViewerGone => "connection lost",
        }
    }

    /// The code of a number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A refusal: the connection was never relayed.
    pub fn is_refusal(self) -> bool {
        (4400..4600).contains(&self.code())
    }

    /// Whether it may appear in a close frame (1006 is reserved for "no close frame").
    pub fn is_sendable(self) -> bool {
        self != CloseCode::ViewerGone
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_refusals_are_private_use_codes() {
        let mut seen = std::collections::HashSet::new();
        for code in CloseCode::ALL {
            assert!(seen.insert(code.code()), "{code} used twice");
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
            if code.is_refusal() {
                assert!((4000..5000).contains(&code.code()), "{code}");
            }
        }
        let refusals = CloseCode::ALL.iter().filter(|c| c.is_refusal()).count();
        assert_eq!(refusals, 8);
    }

    #[test]
    fn reasons_fit_in_a_close_frame() {
        for code in CloseCode::ALL {
            // RFC 6455: the payload of a control frame is at most 125 bytes, 2 of them the code.
            assert!(code.reason().len() <= 123, "{code}");
        }
    }
}
