//! The console's tickets in the store (`console_tickets`), written once and run against both
//! backends (like `users.rs`): minted, redeemed once (also under concurrent attempts), every
//! refusal, gone with their user or VM, and purged by maintenance.

mod support;

use std::sync::Arc;

use chrono::{Duration, Utc};
use infinibay_store::{NewUser, Retention, Role, Store, TICKET_RETENTION};
use infinibay_store::{Redemption, Ticket, TicketRefusal};

async fn user_and_vms(store: &Arc<dyn Store>, name: &str) -> i64 {
    let now = Utc::now();
    store
        .upsert_vms(&[("vm-a".to_owned(), now), ("vm-b".to_owned(), now)])
        .await
        .expect("register VMs");
    store
        .users()
        .create_user(
            &NewUser {
                username: name.to_owned(),
                password_hash: "$argon2id$fake".to_owned(),
                role: Role::User,
                department: None,
                permissions: Vec::new(),
                namespace: format!("user_{name}"),
            },
            now,
        )
        .await
        .expect("create user")
        .id
}

fn refused(refusal: TicketRefusal, user_id: Option<i64>) -> Redemption {
    Redemption::Refused { refusal, user_id }
}

mod story {
    use super::*;

    pub async fn a_ticket_is_redeemed_once_whatever_the_vm_and_refusals_say_why(
        store: Arc<dyn Store>,
    ) {
        let user = user_and_vms(&store, "alice").await;
        let tickets = store.tickets();
        let now = Utc::now();

        let ticket = Ticket::generate().expect("ticket");
        tickets
            .mint(&ticket.hash(), user, "vm-a", now + Duration::seconds(30))
            .await
            .expect("mint");
        assert_eq!(
            tickets
                .redeem(&ticket.hash(), "vm-a", now)
                .await
                .expect("redeem"),
            Redemption::Granted { user_id: user }
        );
        assert_eq!(
            tickets
                .redeem(&ticket.hash(), "vm-a", now)
                .await
                .expect("again"),
            refused(TicketRefusal::AlreadyUsed, Some(user))
        );

        let other = Ticket::generate().expect("ticket");
        tickets
            .mint(&other.hash(), user, "vm-b", now + Duration::seconds(30))
            .await
            .expect("mint");
        assert_eq!(
            tickets
                .redeem(&other.hash(), "vm-a", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::OtherVm, Some(user))
        );
        assert_eq!(
            tickets
                .redeem(&other.hash(), "vm-b", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::AlreadyUsed, Some(user)),
            "presented for another VM, it was burnt"
        );

        let expired = Ticket::generate().expect("ticket");
        tickets
            .mint(&expired.hash(), user, "vm-a", now - Duration::seconds(1))
            .await
            .expect("mint");
        assert_eq!(
            tickets
                .redeem(&expired.hash(), "vm-a", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::UnknownOrExpired, Some(user))
        );
        let never = Ticket::generate().expect("ticket");
        assert_eq!(
            tickets
                .redeem(&never.hash(), "vm-a", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::UnknownOrExpired, None)
        );
    }

    pub async fn of_sixteen_concurrent_redemptions_exactly_one_wins(store: Arc<dyn Store>) {
        let user = user_and_vms(&store, "bob").await;
        let ticket = Ticket::generate().expect("ticket");
        let now = Utc::now();
        store
            .tickets()
            .mint(&ticket.hash(), user, "vm-a", now + Duration::seconds(30))
            .await
            .expect("mint");
        let attempts = (0..16).map(|_| {
            let store = store.clone();
            let hash = ticket.hash();
            tokio::spawn(async move { store.tickets().redeem(&hash, "vm-a", Utc::now()).await })
        });
        let mut granted = 0;
        for attempt in attempts {
            match attempt.await.expect("join").expect("redeem") {
                Redemption::Granted { .. } => granted += 1,
                other => assert_eq!(other, refused(TicketRefusal::AlreadyUsed, Some(user))),
            }
        }
        assert_eq!(granted, 1);
    }

    pub async fn tickets_go_with_their_user_or_vm_and_maintenance_purges_old_ones(
        store: Arc<dyn Store>,
    ) {
        let user = user_and_vms(&store, "carol").await;
        let tickets = store.tickets();
        let now = Utc::now();
        let mint = |vm: &'static str, expires| {
            let store = store.clone();
            async move {
                let ticket = Ticket::generate().expect("ticket");
                store
                    .tickets()
                    .mint(&ticket.hash(), user, vm, expires)
                    .await
                    .expect("mint");
                ticket
            }
        };
        let live = mint("vm-a", now + Duration::seconds(30)).await;
        let old = mint("vm-a", now - TICKET_RETENTION - Duration::seconds(1)).await;
        let of_vm_b = mint("vm-b", now + Duration::seconds(30)).await;

        let report = store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain");
        assert!(report.pruned >= 1, "{report:?}");
        // A purged ticket is unknown; a ticket expired within the retention still says so.
        assert_eq!(
            tickets
                .redeem(&old.hash(), "vm-a", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::UnknownOrExpired, None)
        );

        store.delete_vm("vm-b").await.expect("delete VM");
        assert_eq!(
            tickets
                .redeem(&of_vm_b.hash(), "vm-b", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::UnknownOrExpired, None),
            "a deleted VM's tickets are gone"
        );
        store.users().delete_user(user).await.expect("delete user");
        assert_eq!(
            tickets
                .redeem(&live.hash(), "vm-a", now)
                .await
                .expect("redeem"),
            refused(TicketRefusal::UnknownOrExpired, None),
            "a deleted user's tickets are gone"
        );

        let nobody = tickets
            .mint(&Ticket::generate().expect("t").hash(), user, "vm-a", now)
            .await;
        assert!(nobody.is_err(), "no ticket for a user who does not exist");
    }
}

support::both_backends!(
    a_ticket_is_redeemed_once_whatever_the_vm_and_refusals_say_why,
    of_sixteen_concurrent_redemptions_exactly_one_wins,
    tickets_go_with_their_user_or_vm_and_maintenance_purges_old_ones,
);
