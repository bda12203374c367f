//! One writer lane: takes queued calls in order, groups them into one commit, answers each
//! caller with its own outcome, and survives a panic of its own code.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::{commit, Op, Request, WritePath, MAX_BATCH_KEYS};

/// Runs one writer lane until its channel closes (store close), draining what is queued.
pub(super) async fn run(wp: Arc<WritePath>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let mut batch = vec![first];
        if wp.group_commit && !matches!(batch[0].op, Op::Clear) {
            let mut keys = batch[0].op.weight();
            while keys < MAX_BATCH_KEYS {
                match rx.try_recv() {
                    Ok(r) if matches!(r.op, Op::Clear) => {
                        carry = Some(r);
                        break;
                    }
                    Ok(r) => {
                        keys += r.op.weight();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
        }
        // A panic must not end the lane: every later write of the companies mapped to it would
        // fail while the store looks open. The batch's unanswered callers get INTERNAL from
        // their dropped `Reply`; the lane goes on with the next batch.
        if let Err(panic) = AssertUnwindSafe(process(&wp, batch)).catch_unwind().await {
            tracing::error!(
                panic = %panic_text(panic.as_ref()),
                "a writer lane panicked; its batch failed with INTERNAL, the lane goes on"
            );
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Commits a batch and answers its callers.
async fn process(wp: &Arc<WritePath>, mut batch: Vec<Request>) {
    #[cfg(all(test, feature = "tempdb"))]
    tests::maybe_panic(&batch);
    if wp.outage.is_down() {
        match wp.outage.divert(batch, None) {
            None => return,
            // The outage ended while we looked: commit normally.
            Some(b) => batch = b,
        }
    }
    let ops: Vec<(&crate::company::Company, &Op)> =
        batch.iter().map(|r| (&*r.company, &r.op)).collect();
    let started = Instant::now();
    let result = commit::commit(wp, &ops).await;
    wp.metrics
        .record("commit", started.elapsed(), result.is_ok());
    match result {
        Ok(fenced) => {
            commit::apply_committed(wp, &ops, &fenced);
            for r in batch {
                r.reply.send(commit::outcome(&r.company, &fenced));
            }
        }
        Err(e) if e.is_unavailable() => {
            wp.outage.enter(&e);
            if let Some(batch) = wp.outage.divert(batch, Some(&e)) {
                // Recovered in the meantime: try again.
                Box::pin(process(wp, batch)).await;
            }
        }
        Err(_) if batch.len() > 1 => {
            // One caller's data broke the merged commit: give each its own outcome.
            for r in batch {
                Box::pin(process(wp, vec![r])).await;
            }
        }
        Err(e) => {
            for r in batch {
                r.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(all(test, feature = "tempdb"))]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::ErrorKind;
    use crate::tempdb::TempCluster;
    use crate::{Config, KeyWrite, Store, StoredValue};

    /// Company whose next batch panics inside the lane (fault injection for the test below).
    static PANIC_FOR: Mutex<Option<String>> = Mutex::new(None);

    pub(super) fn maybe_panic(batch: &[Request]) {
        let mut target = PANIC_FOR.lock().unwrap_or_else(|p| p.into_inner());
        let hit = target
            .as_deref()
            .is_some_and(|c| batch.iter().any(|r| &*r.company.id == c));
        if hit {
            let c = target.take();
            drop(target);
            panic!("injected panic for {c:?}");
        }
    }

    #[test]
    fn a_lane_survives_a_panic() {
        let cluster = TempCluster::start().unwrap();
        cluster.create_database("lanepanic").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut config = Config::from_url(&cluster.url("lanepanic")).unwrap();
            // One lane: every company shares the lane that panics.
            config.write_lanes = 1;
            let fresh_config = Config {
                lease: false,
                ..config.clone()
            };
            let store = Store::open(config).await.unwrap();
            store.migrate().await.unwrap();
            let boom = store.session("boom").await.unwrap();
            let other = store.session("other").await.unwrap();
            let v = StoredValue::from_json(r#"{"a":1}"#).unwrap();
            let put = |id: &str| vec![KeyWrite::put("session", id, v.clone()).unwrap()];

            *PANIC_FOR.lock().unwrap() = Some("boom".into());
            let e = boom.set(put("1")).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Internal, "{e}");

            // The lane goes on: later writes of both companies commit and read back.
            boom.set(put("2")).await.unwrap();
            other.set(put("3")).await.unwrap();
            assert_eq!(boom.get("session", &["2"]).await.unwrap().len(), 1);
            assert_eq!(other.get("session", &["3"]).await.unwrap().len(), 1);
            // The panicked batch wrote nothing.
            // A reader beside the holder of the lease: without a lease of its own.
            let fresh = Store::open(fresh_config).await.unwrap();
            let s = fresh.session("boom").await.unwrap();
            assert!(s.get("session", &["1"]).await.unwrap().is_empty());
            fresh.close().await.unwrap();
            store.close().await.unwrap();
        });
    }
}
