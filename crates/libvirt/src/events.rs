//! libvirt's event loop and the two callbacks the crate registers on it: domain lifecycle
//! events and the connection's close notification.
//!
//! libvirt delivers events only to a process that registered an event loop implementation
//! *before* opening connections, and only while something runs that loop. We use libvirt's
//! own default implementation (`virEventRegisterDefaultImpl`) on one process-wide thread
//! (`virEventRunDefaultImpl` in a loop). It cannot be unregistered, so the thread lives as long
//! as the process; it is idle (in `poll`) when nothing happens.
//!
//! The callbacks run on that thread and must never block it (keepalives and every connection's
//! I/O go through it): they copy what they need and `try_send` it into a bounded queue. When
//! the queue is full they raise a flag instead, and the consumer replaces what was lost with a
//! full resync (see `supervisor`).

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use uuid::Uuid;
use virt_sys as sys;

use crate::error::{Error, Result};

/// Registers libvirt's default event loop and starts the thread that runs it, once per
/// process. Also silences libvirt's default error printer (errors are returned, not printed).
pub(crate) fn ensure_event_loop() -> Result<()> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            virt::error::clear_error_callback();
            // SAFETY: plain C call with no arguments; called once per process (OnceLock),
            // before any connection is opened by this crate.
            if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
                return Err(format!(
                    "virEventRegisterDefaultImpl: {}",
                    virt::error::Error::last_error().message()
                ));
            }
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        // SAFETY: the default implementation was registered above.
                        if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                            tracing::warn!(
                                target: "infinibay::libvirt",
                                error = %virt::error::Error::last_error().message(),
                                "libvirt event loop iteration failed"
                            );
                            // Do not spin if the loop keeps failing.
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                })
                .map(|_| ())
                .map_err(|e| format!("starting the libvirt event thread: {e}"))
        })
        .clone()
        .map_err(Error::Internal)
}

/// What the callbacks hand to the connection's supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawEvent {
    /// `VIR_DOMAIN_EVENT_ID_LIFECYCLE` with libvirt's numbers.
    Lifecycle {
        uuid: Uuid,
        name: String,
        event: i32,
        detail: i32,
    },
    /// The connection closed (`VIR_CONNECT_CLOSE_REASON_*`).
    Closed { reason: i32 },
}

/// Shared by both callbacks of one connection and its supervisor.
#[derive(Debug)]
pub(crate) struct Signals {
    /// Set when an event could not be queued (the supervisor then resyncs).
    pub overflowed: AtomicBool,
    /// Set when the connection closed (in case the queue was full at that moment).
    pub closed: AtomicBool,
}

struct CallbackContext {
    queue: SyncSender<RawEvent>,
    signals: Arc<Signals>,
}

impl CallbackContext {
    fn push(&self, event: RawEvent) {
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.signals.overflowed.store(true, Ordering::SeqCst),
            // The supervisor is gone: nobody wants the event.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

unsafe extern "C" fn free_context(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` is the `Box<CallbackContext>` leaked at registration; libvirt calls
        // this exactly once, after the last callback.
        drop(unsafe { Box::from_raw(opaque.cast::<CallbackContext>()) });
    }
}

/// `virConnectDomainEventCallback` (the lifecycle signature), registered through the generic
/// pointer type as libvirt's `VIR_DOMAIN_EVENT_CALLBACK` macro does in C.
unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) {
    if opaque.is_null() || dom.is_null() {
        return;
    }
    // SAFETY: `opaque` is our live context (freed only through `free_context`); `dom` is valid
    // for the duration of the callback. Both calls read the local domain object (no RPC).
    let context = unsafe { &*opaque.cast::<CallbackContext>() };
    let mut raw_uuid = [0u8; sys::VIR_UUID_BUFLEN as usize];
    if unsafe { sys::virDomainGetUUID(dom, raw_uuid.as_mut_ptr()) } < 0 {
        context.signals.overflowed.store(true, Ordering::SeqCst);
        return;
    }
    let name_ptr = unsafe { sys::virDomainGetName(dom) };
    let name = if name_ptr.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string owned by `dom`; copied before returning.
        unsafe { CStr::from_ptr(name_ptr) }
            .to_string_lossy()
            .into_owned()
    };
    context.push(RawEvent::Lifecycle {
        uuid: Uuid::from_bytes(raw_uuid),
        name,
        event,
        detail,
    });
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: as in `on_lifecycle`.
    let context = unsafe { &*opaque.cast::<CallbackContext>() };
    context.signals.closed.store(true, Ordering::SeqCst);
    context.push(RawEvent::Closed { reason });
}

/// A human reading of `VIR_CONNECT_CLOSE_REASON_*`.
pub(crate) fn close_reason(reason: i32) -> &'static str {
    match u32::try_from(reason).unwrap_or(u32::MAX) {
        sys::VIR_CONNECT_CLOSE_REASON_ERROR => "connection error",
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "libvirtd closed the connection",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "libvirtd stopped answering keepalives",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by this process",
        _ => "closed for an unknown reason",
    }
}

type LifecycleCallback =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void);
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// Both callbacks registered on one connection; [`Registration::deregister`] removes them
/// (libvirt then frees their contexts).
pub(crate) struct Registration {
    conn: sys::virConnectPtr,
    lifecycle_id: c_int,
    close_registered: bool,
}

// SAFETY: the pointer is only passed to libvirt's thread-safe (de)registration calls, and the
// connection it points to is kept alive by the `Connect` the owner holds alongside.
unsafe impl Send for Registration {}

impl Registration {
    /// Registers lifecycle events for every domain and the close callback on `conn`.
    ///
    /// # Safety
    /// `conn` must stay open until [`Registration::deregister`] is called.
    pub(crate) unsafe fn register(
        conn: sys::virConnectPtr,
        queue: SyncSender<RawEvent>,
        signals: Arc<Signals>,
    ) -> Result<Registration> {
        let lifecycle_context = Box::into_raw(Box::new(CallbackContext {
            queue: queue.clone(),
            signals: signals.clone(),
        }));
        // SAFETY: transmuting between two `extern "C"` function pointer types; libvirt calls
        // it back with the lifecycle signature for VIR_DOMAIN_EVENT_ID_LIFECYCLE.
        let callback =
            unsafe { std::mem::transmute::<LifecycleCallback, GenericCallback>(on_lifecycle) };
        let lifecycle_id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn,
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                Some(callback),
                lifecycle_context.cast(),
                Some(free_context),
            )
        };
        if lifecycle_id < 0 {
            let error = virt::error::Error::last_error();
            // Not registered: libvirt did not take ownership of the context.
            drop(unsafe { Box::from_raw(lifecycle_context) });
            return Err(Error::Internal(format!(
                "registering for domain lifecycle events: {}",
                error.message()
            )));
        }
        let close_context = Box::into_raw(Box::new(CallbackContext { queue, signals }));
        let close = unsafe {
            sys::virConnectRegisterCloseCallback(
                conn,
                Some(on_close),
                close_context.cast(),
                Some(free_context),
            )
        };
        let close_registered = close >= 0;
        if !close_registered {
            // Drivers without a remote connection (qemu:///embed, test:///) have no close
            // callback; the connection cannot go away under us there.
            drop(unsafe { Box::from_raw(close_context) });
            tracing::debug!(
                target: "infinibay::libvirt",
                error = %virt::error::Error::last_error().message(),
                "no close callback on this connection"
            );
        }
        Ok(Registration {
            conn,
            lifecycle_id,
            close_registered,
        })
    }

    /// Removes both callbacks. Errors are ignored: on a connection that already closed,
    /// libvirt has dropped the callbacks itself.
    pub(crate) fn deregister(self) {
        // SAFETY: `conn` is still open (the caller's contract) and the ids are ours.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.conn, self.lifecycle_id);
            if self.close_registered {
                sys::virConnectUnregisterCloseCallback(self.conn, Some(on_close));
            }
        }
    }
}
