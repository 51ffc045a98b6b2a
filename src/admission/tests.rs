//! Admission tests: hand-off, classes and counts, on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use super::{Rejected, Slot, WaitQueue, Waited};
use crate::backend::BackendState;
use crate::config::Priority;

fn backend() -> (Arc<BackendState>, Arc<WaitQueue>) {
    let b = Arc::new(BackendState::new("p", "127.0.0.1:1".parse().unwrap(), true));
    (b, Arc::new(WaitQueue::new("p")))
}

fn none() -> Option<()> {
    None
}

const NORMAL: (Priority, Duration) = (Priority::Normal, Duration::from_secs(2));

fn handed(r: Result<Waited<()>, Rejected>) -> Result<Slot, Rejected> {
    match r? {
        Waited::Handed(s) => Ok(s),
        Waited::Found(()) => Err(Rejected::Timeout),
    }
}

/// A normal-class waiter for any backend, with a 5 s timeout, once it is in the queue.
async fn queued_waiter(queue: &Arc<WaitQueue>) -> tokio::task::JoinHandle<Result<Slot, Rejected>> {
    let q = Arc::clone(queue);
    let waiter = tokio::spawn(async move {
        handed(
            q.wait(5, Duration::from_secs(5), None, NORMAL, (None, false), none)
                .await,
        )
    });
    while !queue.has_waiters() {
        tokio::task::yield_now().await;
    }
    waiter
}

#[tokio::test(start_paused = true)]
async fn a_slot_freed_while_joining_the_queue_is_found_at_once() {
    let (b, queue) = backend();
    let start = tokio::time::Instant::now();
    // Freed just before the waiter joins (nobody to hand it to): its retry finds it.
    let held = Slot::try_take(&b, 1, &queue).expect("free slot");
    drop(held);
    let r = queue
        .wait(
            5,
            Duration::from_secs(60),
            None,
            NORMAL,
            (None, false),
            || Slot::try_take(&b, 1, &queue),
        )
        .await;
    assert!(matches!(r, Ok(Waited::Found(_))));
    drop(r);
    // Freed just after it joined: handed to it.
    let held = Slot::try_take(&b, 1, &queue).expect("free slot");
    let r = queue
        .wait(
            5,
            Duration::from_secs(60),
            None,
            NORMAL,
            (None, false),
            || {
                drop(held);
                Slot::try_take(&b, 1, &queue)
            },
        )
        .await;
    assert!(matches!(r, Ok(Waited::Handed(_))));
    drop(r);
    assert_eq!(start.elapsed(), Duration::ZERO, "no wait in either case");
    assert_eq!(b.inflight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_of_a_backend_whose_breaker_opened_is_not_handed_on() {
    let (b, queue) = backend();
    let cfg = crate::config::BreakerConfig {
        consecutive_failures: 1,
        failure_rate: 1.0,
        window: Duration::from_secs(10),
        min_requests: 100,
        open_for: Duration::from_secs(60),
        max_open_for: Duration::from_secs(60),
        half_open_requests: 1,
        failure_on: crate::config::OutcomeSet::default_failures(),
    };
    b.configure_breaker(Some(&cfg));
    let slot = Slot::try_take(&b, 1, &queue).expect("free slot");
    let permit = b.breaker_permit().unwrap().unwrap();
    permit.record(
        crate::config::Outcome::ConnectError,
        std::time::Instant::now(),
    );
    let waiter = queued_waiter(&queue).await;
    drop(slot);
    assert_eq!(
        b.inflight(),
        0,
        "released, not handed to a waiter that would fail"
    );
    assert!(
        waiter.await.unwrap().is_err(),
        "the waiter waited on (and timed out)"
    );
}

#[tokio::test]
async fn a_waiter_gets_only_a_backend_it_accepts() {
    let q = Arc::new(WaitQueue::new("p"));
    let a = Arc::new(BackendState::new("p", "127.0.0.1:1".parse().unwrap(), true));
    let b = Arc::new(BackendState::new("p", "127.0.0.1:2".parse().unwrap(), true));
    let on_a = Slot::try_take(&a, 1, &q).unwrap();
    let on_b = Slot::try_take(&b, 1, &q).unwrap();
    // The oldest waiter wants b only; the next takes anything.
    let only_b: Arc<[std::net::SocketAddr]> = vec![b.addr].into();
    let q1 = Arc::clone(&q);
    let w1 = tokio::spawn(async move {
        handed(
            q1.wait(
                5,
                Duration::from_secs(5),
                Some(only_b),
                NORMAL,
                (None, false),
                none,
            )
            .await,
        )
    });
    while q.depth() < 1 {
        tokio::task::yield_now().await;
    }
    let q2 = Arc::clone(&q);
    let w2 = tokio::spawn(async move {
        handed(
            q2.wait(5, Duration::from_secs(5), None, NORMAL, (None, false), none)
                .await,
        )
    });
    while q.depth() < 2 {
        tokio::task::yield_now().await;
    }
    drop(on_a);
    let got2 = w2
        .await
        .unwrap()
        .expect("a's slot goes to the waiter that takes any");
    assert_eq!(got2.backend().addr, a.addr);
    drop(on_b);
    let got1 = w1
        .await
        .unwrap()
        .expect("b's slot goes to the waiter that waited for it");
    assert_eq!(got1.backend().addr, b.addr);
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_waiter_and_counts_stay_exact() {
    let (b, queue) = backend();
    let first = Slot::try_take(&b, 1, &queue).expect("free slot");
    assert!(Slot::try_take(&b, 1, &queue).is_none(), "cap 1");
    let waiter = queued_waiter(&queue).await;
    drop(first);
    let handed = waiter.await.unwrap().expect("the waiter got the slot");
    assert_eq!(b.inflight(), 1, "handed over, not released and retaken");
    drop(handed);
    assert_eq!(b.inflight(), 0);
}

#[tokio::test]
async fn a_departed_waiter_never_double_releases() {
    let (b, queue) = backend();
    let slot = Slot::try_take(&b, 1, &queue).expect("free slot");
    // A waiter that gives up: its entry stays queued, closed.
    let r = queue
        .wait(
            5,
            Duration::from_millis(1),
            None,
            NORMAL,
            (None, false),
            none,
        )
        .await;
    assert!(r.is_err());
    // Another waiter that is still there.
    let waiter = queued_waiter(&queue).await;
    drop(slot);
    let handed = waiter.await.unwrap().expect("the live waiter got the slot");
    assert_eq!(b.inflight(), 1);
    drop(handed);
    assert_eq!(b.inflight(), 0, "released exactly once");
}

#[tokio::test(start_paused = true)]
async fn higher_classes_go_first_and_old_low_waiters_count_as_normal() {
    let (b, queue) = backend();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let join = |class: Priority| {
        let (q, order) = (Arc::clone(&queue), Arc::clone(&order));
        tokio::spawn(async move {
            let r = q
                .wait(
                    9,
                    Duration::from_secs(60),
                    None,
                    (class, Duration::from_secs(2)),
                    (None, false),
                    none,
                )
                .await;
            let slot = handed(r).expect("a slot");
            // Recorded before the slot goes on to the next waiter.
            order.lock().unwrap().push(class);
            drop(slot);
        })
    };
    let mut waiters = Vec::new();
    let held = Slot::try_take(&b, 1, &queue).expect("free slot");
    for (n, class) in [Priority::Low, Priority::Normal, Priority::High]
        .into_iter()
        .enumerate()
    {
        waiters.push(join(class));
        while queue.depth() < n + 1 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(queue.depth_of(Priority::Low), 1);
    drop(held);
    for w in waiters.drain(..) {
        w.await.unwrap();
    }
    assert_eq!(
        std::mem::take(&mut *order.lock().unwrap()),
        [Priority::High, Priority::Normal, Priority::Low]
    );

    // A low waiter that waited past max_wait_low counts as normal, and is the older.
    let held = Slot::try_take(&b, 1, &queue).expect("free slot");
    waiters.push(join(Priority::Low));
    while queue.depth() < 1 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    waiters.push(join(Priority::Normal));
    while queue.depth() < 2 {
        tokio::task::yield_now().await;
    }
    drop(held);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [Priority::Low, Priority::Normal]);
    assert_eq!(b.inflight(), 0);
}

#[test]
fn held_slots_count_without_a_queue() {
    let (b, _) = backend();
    let s = Slot::hold(&b);
    assert_eq!(s.backend().inflight(), 1);
    drop(s);
    assert_eq!(b.inflight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_holding_its_share_is_passed_over_while_others_wait() {
    use crate::config::{RateKey, TenantConfig};
    let (b, queue) = backend();
    let cfg = TenantConfig {
        key: RateKey::Header(http::HeaderName::from_static("x-tenant")),
        max_share: 0.5,
    };
    let seat = |t: &'static str| {
        let mut h = http::HeaderMap::new();
        h.insert("x-tenant", http::HeaderValue::from_static(t));
        queue
            .tenants
            .seat(&cfg, 1, "127.0.0.1".parse().unwrap(), &h)
    };
    // Tenant a took both slots while nobody waited.
    let mut a1 = Slot::try_take(&b, 2, &queue).expect("free slot");
    a1.charge(Some(&seat("a")));
    let mut a2 = Slot::try_take(&b, 2, &queue).expect("free slot");
    a2.charge(Some(&seat("a")));
    assert!(seat("a").full() && !seat("b").full());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (n, t) in ["a", "b"].into_iter().enumerate() {
        let (q, order, s) = (Arc::clone(&queue), Arc::clone(&order), seat(t));
        waiters.push(tokio::spawn(async move {
            let r = q
                .wait(
                    9,
                    Duration::from_secs(60),
                    None,
                    NORMAL,
                    (Some(s), false),
                    none,
                )
                .await;
            let slot = handed(r).expect("a slot");
            order.lock().unwrap().push(t);
            slot
        }));
        while queue.depth() < n + 1 {
            tokio::task::yield_now().await;
        }
    }
    // One of a's slots frees: a still holds its share, so b (the younger) is served.
    drop(a1);
    while order.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(*order.lock().unwrap(), ["b"]);
    assert!(seat("a").full() && seat("b").full());
    // a's other slot frees: a is below its share, and its waiter is served.
    drop(a2);
    let mut held = Vec::new();
    for w in waiters {
        held.push(w.await.unwrap());
    }
    assert_eq!(*order.lock().unwrap(), ["b", "a"]);
    drop(held);
    assert_eq!(b.inflight(), 0);
    assert!(
        !seat("a").full() && !seat("b").full(),
        "counts back to zero"
    );
}
