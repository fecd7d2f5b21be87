//! The console relay end to end on loopback: a real axum server, a real WebSocket client and
//! real UNIX sockets standing where a VM's VNC server listens. (The RFB handshake with a real
//! VNC server, QEMU's, is in `crates/e2e/tests/console.rs`.)

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use futures_util::{SinkExt, StreamExt};
use infinibay_console::{CloseCode, ConsoleConfig, Ticket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flow_both_ways_and_the_binary_subprotocol_is_selected() {
    bytes_flow_both_ways(Harness::start().await).await;
}

async fn bytes_flow_both_ways(h: Harness) {
    let (vm, vnc) = h.vm_with_console(7);
    let ticket = h.ticket(7, &vm).await;
    assert!(ticket.path.starts_with(&format!("/console/{vm}?ticket=")));
    let valid_for = (ticket.expires_at - Utc::now()).num_milliseconds();
    assert!(
        (20_000..=30_000).contains(&valid_for),
        "valid for {valid_for} ms"
    );
    let (mut viewer, protocol) = h.connect(&ticket.path).await;
    assert_eq!(protocol.as_deref(), Some("binary"));
    let (mut guest, _) = vnc.accept().await.expect("accept");

    guest
        .write_all(b"RFB 003.008\n")
        .await
        .expect("guest writes");
    assert_eq!(next_binary(&mut viewer).await, b"RFB 003.008\n");
    send(&mut viewer, b"RFB 003.008\n").await;
    let mut got = [0u8; 12];
    guest.read_exact(&mut got).await.expect("guest reads");
    assert_eq!(&got, b"RFB 003.008\n");

    // A megabyte in many messages arrives whole and in order, both ways.
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        guest.write_all(&big).await.expect("guest writes 1 MiB");
        guest
    });
    let mut received = Vec::new();
    while received.len() < 1_048_576 {
        received.extend(next_binary(&mut viewer).await);
    }
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8)
    );
    let mut guest = writer.await.expect("writer");
    for block in 0..16u8 {
        send(&mut viewer, &[block; 4096]).await;
    }
    let mut upstream = vec![0u8; 16 * 4096];
    guest.read_exact(&mut upstream).await.expect("guest reads");
    assert!(
        upstream
            .chunks(4096)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b == i as u8))
    );

    viewer.close(None).await.expect("viewer closes");
    let record = h.audit.wait_for(&vm, |r| r.opened).await;
    assert_eq!(record.user_id, Some(7));
    assert_eq!(record.end, CloseCode::ViewerClosed);
    assert_eq!(record.bytes_to_viewer, 12 + 1_048_576);
    assert_eq!(record.bytes_from_viewer, 12 + 16 * 4096);
    assert!(record.remote.is_some_and(|r| r.ip().is_loopback()));
    assert!(!record.took_over);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opens_one_console_and_its_replay_is_refused_with_4410_and_logged() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let ticket = h.ticket(7, &vm).await;
    let (_first, _) = h.connect(&ticket.path).await;
    let _guest = vnc.accept().await.expect("first one relayed");

    let (mut replay, _) = h.connect(&ticket.path).await;
    assert_eq!(
        close_of(&mut replay).await,
        (4410, "ticket already used".into())
    );
    let line = wait_for_log(&["console refused", &vm, "code=4410"]).await;
    assert!(line.contains("user=7"), "{line}");
    assert!(line.contains("remote=127.0.0.1:"), "{line}");
    assert!(line.contains("ticket already used"), "{line}");
    assert!(
        !line.contains(ticket.ticket.as_str()),
        "the ticket itself is never logged: {line}"
    );
    let refused = h.audit.wait_for(&vm, |r| !r.opened).await;
    assert_eq!(refused.end, CloseCode::TicketAlreadyUsed);
    assert_eq!(refused.user_id, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_missing_and_malformed_tickets_are_refused_with_4401() {
    let h = Harness::start().await;
    let (vm, _vnc) = h.vm_with_console(7);
    let expired = h.expired_ticket(7, &vm).await;
    let never_minted = Ticket::generate().expect("randomness");
    for query in [
        format!("?ticket={}", expired.as_str()),
        format!("?ticket={}", never_minted.as_str()),
        String::new(),
        "?ticket=short".into(),
        "?ticket=%ZZ".into(),
    ] {
        let (mut viewer, _) = h.connect(&format!("/console/{vm}{query}")).await;
        assert_eq!(
            close_of(&mut viewer).await,
            (4401, "unknown or expired ticket".into()),
            "{query}"
        );
    }
    wait_for_log(&["console refused", &vm, "code=4401", "user=7"]).await;
    wait_for_log(&["console refused", &vm, "code=4401", "user=-"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_for_another_vm_is_refused_with_4421_and_cannot_be_used_afterwards() {
    let h = Harness::start().await;
    let (vm_a, _vnc_a) = h.vm_with_console(7);
    let (vm_b, vnc_b) = h.vm_with_console(7);
    let for_b = h.ticket(7, &vm_b).await;
    let on_a = for_b.path.replace(&vm_b, &vm_a);
    let (mut viewer, _) = h.connect(&on_a).await;
    assert_eq!(
        close_of(&mut viewer).await,
        (4421, "ticket for another VM".into())
    );
    let (mut viewer, _) = h.connect(&for_b.path).await;
    assert_eq!(close_of(&mut viewer).await.0, 4410);
    // Nothing ever reached either VNC socket.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), vnc_b.accept())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_refusals_close_with_4403_4404_and_4409() {
    let h = Harness::start().await;
    let (vm, _vnc) = h.vm_with_console(7);
    // User 8 has a valid ticket for this VM but may not open it (e.g. lost ownership).
    let ticket = h.ticket(8, &vm).await;
    let (mut viewer, _) = h.connect(&ticket.path).await;
    assert_eq!(close_of(&mut viewer).await, (4403, "not allowed".into()));

    h.set_vm(&vm, VmConsole::None);
    let ticket = h.ticket(7, &vm).await;
    let (mut viewer, _) = h.connect(&ticket.path).await;
    assert_eq!(
        close_of(&mut viewer).await,
        (4404, "VM has no console".into())
    );

    h.set_vm(&vm, VmConsole::Stopped);
    let ticket = h.ticket(7, &vm).await;
    let (mut viewer, _) = h.connect(&ticket.path).await;
    assert_eq!(close_of(&mut viewer).await, (4409, "VM not running".into()));
    wait_for_log(&["console refused", &vm, "code=4403", "user=8"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_vnc_socket_is_no_console_and_one_nobody_listens_on_is_not_running() {
    let h = Harness::start().await;
    let vm = uuid();
    h.allow(7, &vm);
    h.set_vm(&vm, VmConsole::Socket);
    let ticket = h.ticket(7, &vm).await;
    let (mut viewer, _) = h.connect(&ticket.path).await;
    assert_eq!(close_of(&mut viewer).await.0, 4404);

    // QEMU died and left its socket file behind.
    drop(std::os::unix::net::UnixListener::bind(h.vnc_path(&vm)).expect("bind"));
    let ticket = h.ticket(7, &vm).await;
    let (mut viewer, _) = h.connect(&ticket.path).await;
    assert_eq!(close_of(&mut viewer).await.0, 4409);
    let line = wait_for_log(&["console refused", &vm, "code=4409"]).await;
    assert!(
        line.contains("refused"),
        "the OS error is in the log: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_console_of_the_same_user_and_vm_is_refused_unless_it_takes_over() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    h.allow(9, &vm);
    let (mut first, _first_guest) = h.open(7, &vm, &vnc).await;
    let (_other_user, _other_guest) = h.open(9, &vm, &vnc).await;

    let second = h.ticket(7, &vm).await;
    let (mut viewer, _) = h.connect(&second.path).await;
    assert_eq!(close_of(&mut viewer).await.0, 4423);

    let takeover = h.ticket(7, &vm).await;
    let (mut newer, _) = h.connect(&format!("{}&takeover=1", takeover.path)).await;
    let (mut newer_guest, _) = vnc.accept().await.expect("takeover relayed");
    assert_eq!(
        close_of(&mut first).await,
        (4001, "taken over by a newer console session".into())
    );
    newer_guest.write_all(b"still here").await.expect("write");
    assert_eq!(next_binary(&mut newer).await, b"still here");
    let first_record = h
        .audit
        .wait_for(&vm, |r| r.end == CloseCode::TakenOver)
        .await;
    assert_eq!(first_record.user_id, Some(7));
    // The newer one and the other user's console are open.
    let sessions = h.console.sessions();
    assert_eq!(sessions.iter().filter(|s| s.vm_id == vm).count(), 2);
    newer.close(None).await.expect("close");
    let record = h.audit.wait_for(&vm, |r| r.took_over).await;
    assert!(
        record.opened,
        "the takeover's record is written when it ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_users_access_ends_their_consoles_with_4002_and_a_removed_vm_with_4000() {
    let h = Harness::start().await;
    let (vm_a, vnc_a) = h.vm_with_console(7);
    let (vm_b, vnc_b) = h.vm_with_console(7);
    h.allow(9, &vm_b);
    let (mut a, _ga) = h.open(7, &vm_a, &vnc_a).await;
    let (mut b, _gb) = h.open(7, &vm_b, &vnc_b).await;
    let (mut other, _go) = h.open(9, &vm_b, &vnc_b).await;

    assert_eq!(h.console.end_user(7), 2);
    assert_eq!(close_of(&mut a).await, (4002, "access revoked".into()));
    assert_eq!(close_of(&mut b).await.0, 4002);
    assert_eq!(h.console.end_vm(&vm_b), 1);
    assert_eq!(close_of(&mut other).await.0, 4000);
    h.audit
        .wait_for(&vm_b, |r| {
            r.user_id == Some(9) && r.end == CloseCode::ConsoleClosed
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_closing_its_vnc_socket_ends_the_console_with_4000() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let (mut viewer, guest) = h.open(7, &vm, &vnc).await;
    drop(guest);
    assert_eq!(
        close_of(&mut viewer).await,
        (4000, "console closed by the VM".into())
    );
    h.audit.wait_for(&vm, |r| r.opened).await;
    assert!(h.console.sessions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_is_refused_with_1003() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let (mut viewer, _guest) = h.open(7, &vm, &vnc).await;
    viewer
        .send(Message::Text("hello".into()))
        .await
        .expect("send");
    assert_eq!(close_of(&mut viewer).await.0, 1003);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_without_upgrade_does_not_consume_the_ticket() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let ticket = h.ticket(7, &vm).await;
    let mut tcp = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    tcp.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            ticket.path
        )
        .as_bytes(),
    )
    .await
    .expect("request");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    let (_viewer, _) = h.connect(&ticket.path).await;
    vnc.accept()
        .await
        .expect("the ticket still opens the console");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_reach_the_viewer_and_a_silent_viewer_is_dropped_with_4003() {
    let h = Harness::with_config(ConsoleConfig {
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(400),
        ..ConsoleConfig::default()
    })
    .await;
    let (vm, vnc) = h.vm_with_console(7);

    // A viewer that reads (and so answers pings) stays, and sees pings.
    let (mut live, _g1) = h.open(7, &vm, &vnc).await;
    let mut pings = 0;
    let reading = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(message)) = live.next().await {
            if matches!(message, Message::Ping(_)) {
                pings += 1;
            }
            if matches!(message, Message::Close(_)) {
                return message;
            }
        }
        Message::Close(None)
    })
    .await;
    assert!(reading.is_err(), "a live viewer was closed: {reading:?}");
    assert!(pings >= 3, "{pings} pings in 2 s at a 100 ms interval");

    // A viewer that reads nothing never answers; it is dropped. (It reads only after the
    // timeout, to see how it was closed.)
    h.allow(8, &vm);
    let (mut silent, _g2) = h.open(8, &vm, &vnc).await;
    wait_for_log(&["console closed", &vm, "user=8", "code=4003"]).await;
    assert_eq!(
        close_of(&mut silent).await,
        (4003, "keepalive timeout".into())
    );
    let record = h
        .audit
        .wait_for(&vm, |r| r.user_id == Some(8) && r.opened)
        .await;
    assert_eq!(record.end, CloseCode::KeepaliveTimeout);
}

fn numbered_block(n: u32) -> Vec<u8> {
    let mut block = vec![0u8; 65_536];
    for word in block.chunks_mut(4) {
        word.copy_from_slice(&n.to_be_bytes());
    }
    block
}

/// 32 MiB: more than the socket buffers on the way (UNIX socket, loopback TCP both ways) and
/// the relay's chunk can hold, so a writer facing a reader that reads nothing must stall.
const BLOCKS: u32 = 512;

/// Wait until `progress` stops moving for 2 s; its value then.
async fn stalled_at(progress: &std::sync::atomic::AtomicU32) -> u32 {
    use std::sync::atomic::Ordering;
    let mut last = progress.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = progress.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_stops_the_vnc_server_and_then_gets_every_byte() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let (mut viewer, mut guest) = h.open(7, &vm, &vnc).await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = tokio::spawn({
        let progress = progress.clone();
        async move {
            for n in 0..BLOCKS {
                guest
                    .write_all(&numbered_block(n))
                    .await
                    .expect("guest writes");
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            guest
        }
    });
    // The viewer reads nothing: the guest's writes stall (the relay holds one chunk), they
    // do not pile up in the relay.
    let stalled = stalled_at(&progress).await;
    assert!(stalled < BLOCKS, "32 MiB went in without any backpressure");
    let total = BLOCKS as usize * 65_536;
    let mut received = Vec::with_capacity(total);
    while received.len() < total {
        received.extend(next_binary(&mut viewer).await);
    }
    for (n, block) in received.chunks(65_536).enumerate() {
        assert!(
            block == numbered_block(n as u32).as_slice(),
            "block {n} differs"
        );
    }
    drop(writer.await.expect("writer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vnc_server_that_stops_reading_stops_the_viewer_and_then_gets_every_byte() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let (viewer, mut guest) = h.open(7, &vm, &vnc).await;
    let (mut sink, mut stream) = viewer.split();
    // Keep reading the server's side (pings) so that only the upstream direction is stuck.
    let reader = tokio::spawn(async move { while stream.next().await.is_some() {} });
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let sender = tokio::spawn({
        let progress = progress.clone();
        async move {
            for n in 0..BLOCKS {
                let message = Message::Binary(numbered_block(n).into());
                sink.send(message).await.expect("viewer sends");
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sink
        }
    });
    let stalled = stalled_at(&progress).await;
    assert!(stalled < BLOCKS, "32 MiB went in without any backpressure");
    let mut received = vec![0u8; BLOCKS as usize * 65_536];
    guest
        .read_exact(&mut received)
        .await
        .expect("guest reads all");
    for (n, block) in received.chunks(65_536).enumerate() {
        assert!(
            block == numbered_block(n as u32).as_slice(),
            "block {n} differs"
        );
    }
    drop(sender.await.expect("sender"));
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_console_with_1001_and_closed_waits_for_their_audit() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    h.allow(8, &vm);
    let (mut a, _ga) = h.open(7, &vm, &vnc).await;
    let (mut b, _gb) = h.open(8, &vm, &vnc).await;
    assert_eq!(h.console.shutdown(), 2);
    let (code_a, code_b) = tokio::join!(close_of(&mut a), close_of(&mut b));
    assert_eq!((code_a.0, code_b.0), (1001, 1001));
    tokio::time::timeout(Duration::from_secs(10), h.console.closed())
        .await
        .expect("sessions end");
    let records = h.audit.of_vm(&vm);
    assert_eq!(records.len(), 2, "{records:#?}");
    assert!(records.iter().all(|r| r.end == CloseCode::ServerShutdown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewers_ping_is_answered_and_its_close_is_replied_to_between_data_frames() {
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let (mut viewer, mut guest) = h.open(7, &vm, &vnc).await;
    // Data keeps flowing while the viewer pings: the pong must come out whole between frames.
    let feeder = tokio::spawn(async move {
        for n in 0..64u32 {
            guest
                .write_all(&numbered_block(n))
                .await
                .expect("guest writes");
        }
        guest
    });
    viewer
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .expect("ping");
    let mut data = 0usize;
    let mut pong = None;
    while data < 64 * 65_536 || pong.is_none() {
        match viewer.next().await {
            Some(Ok(Message::Binary(bytes))) => data += bytes.len(),
            Some(Ok(Message::Pong(payload))) => pong = Some(payload),
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(data, 64 * 65_536);
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    let _guest = feeder.await.expect("feeder");

    viewer.close(None).await.expect("close");
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match viewer.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected the close reply, got {other:?}"),
            }
        }
    })
    .await
    .expect("close reply within 10 s");
    assert!(reply.is_none_or(|f| u16::from(f.code) == 1000 || u16::from(f.code) == 1005));
    let record = h.audit.wait_for(&vm, |r| r.opened).await;
    assert_eq!(record.end, CloseCode::ViewerClosed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_served_over_a_unix_listener_is_relayed_too() {
    // Not TCP: the relay splits the upgraded connection generically.
    let h = Harness::start().await;
    let (vm, vnc) = h.vm_with_console(7);
    let http_socket = h.dir.join("http.sock");
    let listener = tokio::net::UnixListener::bind(&http_socket).expect("bind");
    let app: axum::Router = h.console.router();
    let server = tokio::spawn(async move {
        axum::serve(listener, app.into_make_service())
            .await
            .expect("serve");
    });
    let ticket = h.ticket(7, &vm).await;
    let stream = tokio::net::UnixStream::connect(&http_socket)
        .await
        .expect("connect");
    let (mut viewer, _) =
        tokio_tungstenite::client_async(format!("ws://localhost{}", ticket.path), stream)
            .await
            .expect("handshake");
    let (mut guest, _) = vnc.accept().await.expect("relayed");
    guest.write_all(b"over a unix socket").await.expect("write");
    let got = loop {
        match viewer.next().await {
            Some(Ok(Message::Binary(data))) => break data,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(&got[..], b"over a unix socket");
    viewer
        .send(Message::Binary(b"and back".to_vec().into()))
        .await
        .expect("send");
    let mut back = [0u8; 8];
    guest.read_exact(&mut back).await.expect("read");
    assert_eq!(&back, b"and back");
    drop(guest);
    let (code, _) = loop {
        match viewer.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break (u16::from(frame.code), frame.reason),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 4000);
    let record = h.audit.wait_for(&vm, |r| r.opened).await;
    assert_eq!(record.remote, None, "no address on a UNIX listener");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vnc_server_on_tcp_is_relayed_both_ways() {
    // libvirt's VNC on a port.
    let h = Harness::start().await;
    let vnc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let vm = uuid();
    h.allow(7, &vm);
    h.set_vm(&vm, VmConsole::Tcp(vnc.local_addr().expect("addr")));
    let ticket = h.ticket(7, &vm).await;
    let (mut viewer, _) = h.connect(&ticket.path).await;
    let (mut guest, _) = vnc.accept().await.expect("relayed");
    let frame: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    guest.write_all(&frame).await.expect("write");
    let mut received = Vec::new();
    while received.len() < frame.len() {
        received.extend(next_binary(&mut viewer).await);
    }
    assert_eq!(received, frame);
    send(&mut viewer, b"key event").await;
    let mut got = [0u8; 9];
    guest.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"key event");
}
