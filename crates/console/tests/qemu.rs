//! The relay in front of a real VNC server: QEMU's, serving the e2e guest's VGA display on
//! `-vnc unix:<socket dir>/vnc-<uuid>.sock` (security type None). One guest for every test
//! here (booted under TCG by `infinibay-e2e`), one test at a time.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::rfb::{Link, Rfb};
use common::*;
use infinibay_console::ConsoleConfig;
use infinibay_e2e::fixture::{scratch_dir, shared_guest};
use infinibay_e2e::{Guest, GuestOptions};

/// One test at a time (each has its own runtime; a tokio mutex works across them).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Boot under TCG on a loaded 2-core machine: generous on purpose.
const BOOT: Duration = Duration::from_secs(120);

/// The guest's socket directory: also where the console's gate looks for `vnc-<vm>.sock`.
fn socket_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("vnc").unwrap_or_else(|e| panic!("{e}")))
        .path()
        .to_path_buf()
}

/// The shared guest, once its init has started (the VGA mode is final by then).
fn guest() -> &'static Guest {
    let guest = shared_guest(|| GuestOptions {
        name: "console".into(),
        hostname: "e2e-console".into(),
        agent: false,
        qga: false,
        network: false,
        vnc: true,
        socket_dir: Some(socket_dir()),
        ..GuestOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    while !guest
        .console_tail(200)
        .contains("init: guest e2e-console up")
    {
        assert!(
            started.elapsed() < BOOT,
            "the guest did not come up\n{}",
            guest.diagnostics()
        );
        assert!(guest.is_running(), "{}", guest.diagnostics());
        std::thread::sleep(Duration::from_millis(100));
    }
    guest
}

/// A console server whose gate lets user 7 open the guest's console.
async fn console_for(guest: &Guest) -> (Harness, String) {
    let h = Harness::in_dir(ConsoleConfig::default(), socket_dir()).await;
    let vm = guest.vm_id().to_string();
    assert_eq!(
        guest.vnc_socket(),
        Some(h.vnc_path(&vm).as_path()),
        "the harness names the socket the way the console looks for it"
    );
    h.allow(7, &vm);
    h.set_vm(&vm, VmConsole::Socket);
    (h, vm)
}

fn ws_url(h: &Harness, path: &str) -> String {
    format!("ws://{}{}", h.addr, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_relay_the_rfb_handshake_reaches_server_init_with_the_guests_framebuffer_size()
{
    let _serial = SERIAL.lock().await;
    let guest = tokio::task::block_in_place(guest);
    let (h, vm) = console_for(guest).await;
    let ticket = h.ticket(7, &vm).await;

    let link = Link::websocket(&ws_url(&h, &ticket.path))
        .await
        .expect("WebSocket to the relay");
    let mut viewer = Rfb::handshake(link).await.unwrap_or_else(|e| {
        panic!(
            "RFB handshake through the relay: {e}\n{}",
            guest.diagnostics()
        )
    });
    let screen = tokio::task::block_in_place(|| guest.screendump(Duration::from_secs(30)))
        .expect("QMP screendump");
    assert_eq!(
        (u32::from(viewer.width), u32::from(viewer.height)),
        (screen.width, screen.height),
        "ServerInit through the relay gives the size QEMU's display has"
    );
    assert_eq!(viewer.name, "QEMU");

    // And pixels flow: one whole raw frame, w × h × bytes per pixel.
    viewer.use_raw_encoding().await.expect("SetEncodings");
    viewer
        .request(false, 0, 0, viewer.width, viewer.height)
        .await
        .expect("FramebufferUpdateRequest");
    let (bytes, pixels) = viewer.read_update(true).await.expect("FramebufferUpdate");
    let frame = usize::from(viewer.width) * usize::from(viewer.height) * viewer.bytes_per_pixel;
    assert_eq!(bytes, frame as u64);
    let pixels = pixels.expect("one rectangle covering the screen");
    assert!(
        pixels.iter().any(|b| *b != pixels[0]),
        "the guest's console text is on the screen, not a blank frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ticket_twice_is_refused_the_second_time_with_4410_and_a_log_line() {
    let _serial = SERIAL.lock().await;
    let guest = tokio::task::block_in_place(guest);
    let (h, vm) = console_for(guest).await;
    let ticket = h.ticket(7, &vm).await;
    let first = Rfb::handshake(
        Link::websocket(&ws_url(&h, &ticket.path))
            .await
            .expect("connect"),
    )
    .await
    .expect("the first use opens the console");

    let mut second = Link::websocket(&ws_url(&h, &ticket.path))
        .await
        .expect("the handshake completes, to carry the close code");
    assert!(second.read_exact(&mut [0u8; 1]).await.is_err());
    assert_eq!(
        second.close_frame(),
        Some(&(4410, "ticket already used".to_owned()))
    );
    let line = wait_for_log(&["console refused", &vm, "code=4410", "user=7"]).await;
    assert!(line.contains("remote=127.0.0.1:"), "{line}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ticket_and_another_users_ticket_for_this_vm_are_refused() {
    let _serial = SERIAL.lock().await;
    let guest = tokio::task::block_in_place(guest);
    let (h, vm) = console_for(guest).await;

    let expired = h.expired_ticket(7, &vm).await;
    let mut link = Link::websocket(&ws_url(
        &h,
        &format!("/console/{vm}?ticket={}", expired.as_str()),
    ))
    .await
    .expect("connect");
    assert!(link.read_exact(&mut [0u8; 1]).await.is_err());
    assert_eq!(link.close_frame().map(|c| c.0), Some(4401));

    // User 8's ticket (minted for them, e.g. before they lost the VM) does not open it.
    let theirs = h.ticket(8, &vm).await;
    let mut link = Link::websocket(&ws_url(&h, &theirs.path))
        .await
        .expect("connect");
    assert!(link.read_exact(&mut [0u8; 1]).await.is_err());
    assert_eq!(link.close_frame().map(|c| c.0), Some(4403));
    wait_for_log(&["console refused", &vm, "code=4403", "user=8"]).await;
}
